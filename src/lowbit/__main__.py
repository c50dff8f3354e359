"""``python -m lowbit`` (and ``torchrun -m lowbit``): the command line."""

from lowbit.cli.main import main

if __name__ == "__main__":
    main()
