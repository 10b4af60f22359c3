"""Signers: key file, AWS KMS and keyless Sigstore, behind `signing.signers.base.Signer`."""
