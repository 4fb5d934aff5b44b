"""RecForest (NeurIPS 2022): T complete K-ary trees, a transformer encoder and one path decoder
per tree."""
