//! gmemd wire protocol.
