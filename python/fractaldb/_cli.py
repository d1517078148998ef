"""The `fractaldb` console script: the command line of the Rust binary, from the same library, with
the binary's messages and exit codes (no Python traceback for an ordinary mistake)."""
import sys


def main() -> None:
    from ._native import cli

    try:
        code = cli(["fractaldb", *sys.argv[1:]])
    except KeyboardInterrupt:
        print("fractaldb: interrupted by signal 2: stopped; the files it finished are kept "
              "(render, rcdb and mvfdb go on from them with --resume)", file=sys.stderr)
        code = 130
    except (ValueError, OSError, RuntimeError) as e:
        print(f"fractaldb: error: {e}", file=sys.stderr)
        code = 1
    sys.exit(code)


if __name__ == "__main__":
    main()
