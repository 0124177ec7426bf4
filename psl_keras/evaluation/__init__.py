"""The paper's evaluation protocols on trained backbones: linear probes on every block (Tables 5/6), weighted
kNN, semi-supervised fine-tuning (Table 7) and transfer (Table 9), plus side-by-side reports."""
