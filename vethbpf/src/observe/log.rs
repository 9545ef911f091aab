//! The program's rare diagnostics (aya-log), read from its log ring buffer by the
//! loaded program's id: `vethbpf monitor --log`.

use std::os::fd::{AsFd, BorrowedFd};
use std::sync::{Arc, Mutex, PoisonError};

use aya_log::EbpfLogger;

use super::record::LogRecord;

/// Collects the records aya-log decodes, for the monitor to print in its own format.
#[derive(Clone, Default)]
struct Collector(Arc<Mutex<Vec<LogRecord>>>);

impl log::Log for Collector {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        let line = LogRecord::new(record.level(), record.args().to_string());
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(line);
    }
    fn flush(&self) {}
}

/// The log of one loaded program.
pub struct ProgramLog {
    program_id: u32,
    logger: EbpfLogger<Collector>,
    lines: Collector,
}

impl ProgramLog {
    /// Attaches to the log ring of the program with id `program_id`.
    pub fn attach(program_id: u32) -> Result<Self, aya_log::Error> {
        let lines = Collector::default();
        let logger = EbpfLogger::init_from_id_with_logger(program_id, lines.clone())?;
        Ok(ProgramLog {
            program_id,
            logger,
            lines,
        })
    }

    /// The program this log belongs to.
    pub fn program_id(&self) -> u32 {
        self.program_id
    }

    /// The records logged since the last call.
    pub fn drain(&mut self) -> Vec<LogRecord> {
        self.logger.flush();
        std::mem::take(&mut *self.lines.0.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

impl AsFd for ProgramLog {
    /// Readable (for poll) when the program logged something.
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.logger.as_fd()
    }
}
