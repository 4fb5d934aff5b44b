"""TDM (KDD 2018): a category tree, the attention-DNN node scorer, k-means relearning."""
