"""Deep Retrieval (Gao et al. 2020): a D x K code grid, J paths per item, EM over the paths."""
