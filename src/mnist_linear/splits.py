"""The assignment's splits of MNIST, in one place. Numbers only, so it imports nothing."""

IMAGE_SIDE = 28
NUM_FEATURES = IMAGE_SIDE * IMAGE_SIDE  # pixels, flattened

MNIST_TRAIN_SIZE = 60000
MNIST_TEST_SIZE = 10000

TRAIN_SIZE = 20000  # the first images of the MNIST training set
VAL_SIZE = 2000  # the images right after them
TEST_SIZE = 2000  # the last images of the MNIST test set
