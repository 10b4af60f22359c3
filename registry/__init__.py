"""The OCI content model and the stores that move it (layout folder, remote registry, S3)."""
