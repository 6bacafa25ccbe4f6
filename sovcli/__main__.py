"""`python -m sovcli` is the same as the `sovcli` command."""

from sovcli.cli.main import main

if __name__ == "__main__":
    main()
