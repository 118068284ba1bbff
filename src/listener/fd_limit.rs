//! The file-descriptor limit of the process. Each connection a server holds is one
//! descriptor; a soft limit of 1,024 (a common default) would let a flood of idle
//! connections make the node fail to open files and sockets of its own long before its
//! connection caps are reached. The soft limit may be raised to the hard one without
//! privileges, so a node does that at start.

use serde::Serialize;

/// The limit before and after [`raise_fd_limit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct FdLimit {
    pub before: Option<u64>,
    pub now: Option<u64>,
}

/// Raises the soft limit on open files to the hard limit (at most 1,048,576); returns
/// what it was and is. `None` is unlimited. Never fails: the limit stays as it was where
/// it cannot be raised.
pub fn raise_fd_limit() -> FdLimit {
    #[cfg(unix)]
    {
        use rustix::process::{Resource, getrlimit, setrlimit};
        const CEILING: u64 = 1 << 20;
        let limit = getrlimit(Resource::Nofile);
        let before = limit.current;
        let target = limit.maximum.unwrap_or(CEILING).min(CEILING);
        if before.is_some_and(|soft| soft < target) {
            let mut raised = limit;
            raised.current = Some(target);
            if let Err(error) = setrlimit(Resource::Nofile, raised) {
                tracing::debug!("cannot raise the open-file limit to {target}: {error}");
            }
        }
        FdLimit {
            before,
            now: getrlimit(Resource::Nofile).current,
        }
    }
    #[cfg(not(unix))]
    {
        FdLimit {
            before: None,
            now: None,
        }
    }
}
