"""One thin module per subcommand: parse-friendly signatures that call into the library."""
