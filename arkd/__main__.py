"""`python -m arkd` is the `ark` command."""

from arkd.cli.main import main

if __name__ == "__main__":
    main()
