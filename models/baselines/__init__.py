"""The baselines the papers compare with: the two-tower (YouTube product-DNN) and Item-CF, both
scored exactly over every item (a flat index)."""
