"""Stand-in for the AUTOMATIC1111 WebUI's `modules` package (tests only; see ../README.md)."""
