//! Configuration: the HCL `replication { ... }` schema, loading with line/column errors, validation.
