"""The ``gradfit`` console script: signal handling first, then the command line.

A Ctrl-C in the first instant (while typer, rich or jax are importing) must end the process like one at any
other time: exit code 130, one line, nothing left behind. So the handlers are installed before anything else is
imported (see gradfit.abort).
"""

import os
import sys


def main() -> None:
    from gradfit import abort

    abort.install()
    from gradfit.training import supervise

    if supervise.wanted(sys.argv[1:]):  # a distributed run trains in a child process that this one watches
        sys.exit(supervise.run(sys.argv[1:]))
    if supervise.WORKER in os.environ:
        supervise.divert_native_output()
    from gradfit.cli import app

    sys.argv[1:] = app.legacy_spellings(sys.argv[1:])
    app.main()


if __name__ == "__main__":
    main()
