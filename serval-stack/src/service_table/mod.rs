//! The service table: longest-prefix match over 256-bit ServiceIDs (being built).
