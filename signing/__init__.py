"""Statements, signers, the trust policy, the verifier, the start-time gate, Airflow's bundle class."""
