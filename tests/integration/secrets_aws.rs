//! AWS Secrets Manager and SSM sources against a local moto, and SigV4 signing.
