"""JTM (NeurIPS 2019): hierarchical user preference representation and joint tree learning."""
