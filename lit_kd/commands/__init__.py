"""Subcommands of ``lit-kd`` besides LightningCLI's: one thin module each, with ``main(argv)``."""
