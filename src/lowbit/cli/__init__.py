"""The command-line interface: one thin file per subcommand."""
