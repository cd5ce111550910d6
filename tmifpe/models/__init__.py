"""Models: the small CNNs trained here and the zoo loader (trained, RobustBench, archives)."""
