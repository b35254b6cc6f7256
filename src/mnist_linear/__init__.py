"""Logistic and softmax regression on MNIST with hand-derived gradients, in PyTorch Lightning."""
