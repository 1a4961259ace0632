//! What rides on a SAL flow: the reliable byte stream (being built).
