"""Spec models, dependency locking, image building and the `dagseal` command line."""
