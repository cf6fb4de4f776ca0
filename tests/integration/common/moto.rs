//! A local AWS (moto) for the AWS source and SigV4 tests. Filled in with those tests.
