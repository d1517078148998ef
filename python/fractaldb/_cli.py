"""The `fractaldb` console script: the command line of the Rust binary, from the same library."""
import sys


def main() -> None:
    from ._native import cli

    sys.exit(cli(["fractaldb", *sys.argv[1:]]))


if __name__ == "__main__":
    main()
