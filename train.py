from mnist_linear.cli import main

if __name__ == "__main__":  # spawned processes (ddp_spawn, macOS, Windows) import this file
    main()
