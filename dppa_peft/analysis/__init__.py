"""``dppa-peft inspect``: delta statistics (the paper's Table 8) and density grids (its Figure 3)."""
