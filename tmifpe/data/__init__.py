"""Datasets: sources (digits, MNIST, CIFAR), integrity checks, evaluation points."""
