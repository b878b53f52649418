"""One module per `mfp` command: its ``key=value`` config dataclass and its ``main(argv) -> int``."""
