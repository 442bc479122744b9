"""Sweeps over recipe keys (`cpt sweep`) and comparisons of finished runs (`cpt compare`)."""
