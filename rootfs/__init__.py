"""What goes into a sandbox root filesystem and the program a learn cycle runs inside it."""
