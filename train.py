from mnist_linear.cli import main

main()
