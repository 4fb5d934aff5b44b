"""DeFoRec (SIGIR 2022): a forest of every relearnt tree, layer-wise sampled-softmax scorers."""
