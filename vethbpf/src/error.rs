//! What kind of failure an error is, for callers that act on it (the command
//! line's exit status, scripts reading `-o json`). Each error type of the library
//! says its kind with `kind()`; [`crate::error_kind`] finds it in an error chain.

/// The kind of a failure. Each has its own exit status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request is malformed: an invalid name, address or combination of
    /// options. Asking again the same way fails the same way.
    Usage,
    /// What the request names does not exist: an endpoint, a namespace.
    NotFound,
    /// The node is not up, or its datapath is gone (its pins vanished).
    NotUp,
    /// The request clashes with what exists: a name or address in use, a setting
    /// different from the node's, no room left.
    Conflict,
    /// Anything else: the kernel refused, I/O failed, an interrupted command.
    Other,
}

impl ErrorKind {
    /// The exit status of a command that failed this way (2 is also what the
    /// argument parser exits with).
    pub const fn exit_code(self) -> u8 {
        match self {
            ErrorKind::Other => 1,
            ErrorKind::Usage => 2,
            ErrorKind::NotFound => 3,
            ErrorKind::NotUp => 4,
            ErrorKind::Conflict => 5,
        }
    }

    /// The name in JSON error objects.
    pub const fn name(self) -> &'static str {
        match self {
            ErrorKind::Other => "other",
            ErrorKind::Usage => "usage",
            ErrorKind::NotFound => "not_found",
            ErrorKind::NotUp => "not_up",
            ErrorKind::Conflict => "conflict",
        }
    }
}
