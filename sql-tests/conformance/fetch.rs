//! Empty: this package only makes Cargo download `datafusion-sqllogictest`.
