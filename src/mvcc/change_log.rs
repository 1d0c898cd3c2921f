//! [`ChangeLog`]: what a write batch has done so far, so it can be published or taken back.

use concord_proto::mvccpb::Event;
use redb::Table;

use super::error::MvccError;
use super::index::{IndexUndo, TreeIndex};
use super::revision::{REVISION_BYTES, Revision};

/// One history row written by the batch and the event it produces.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// The row's revision.
    pub rev: Revision,
    /// The watch event for it.
    pub event: Event,
}

/// A point in a [`ChangeLog`] to roll back to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark {
    undo: usize,
    changes: usize,
}

/// The index undos and the rows/events of a write batch, in order.
#[derive(Debug, Default)]
pub struct ChangeLog {
    undo: Vec<IndexUndo>,
    changes: Vec<Change>,
}

impl ChangeLog {
    /// An empty log.
    pub fn new() -> Self {
        ChangeLog::default()
    }

    /// The current position, for [`ChangeLog::rollback_to`].
    pub fn mark(&self) -> Mark {
        Mark {
            undo: self.undo.len(),
            changes: self.changes.len(),
        }
    }

    /// Records a written row, its event and the index mutation that goes with it.
    pub fn push_change(&mut self, change: Change, undo: IndexUndo) {
        self.changes.push(change);
        self.undo.push(undo);
    }

    /// Records an index mutation that wrote no row (compaction).
    pub fn push_undo(&mut self, undo: IndexUndo) {
        self.undo.push(undo);
    }

    /// Takes back everything after `mark`: index mutations (which cannot fail), then the rows.
    pub fn rollback_to(
        &mut self,
        mark: Mark,
        index: &mut TreeIndex,
        table: &mut Table<'_, [u8; REVISION_BYTES], &'static [u8]>,
    ) -> Result<(), MvccError> {
        self.undo_index_to(mark.undo, index);
        while self.changes.len() > mark.changes {
            if let Some(change) = self.changes.pop() {
                table.remove(change.rev.to_bytes())?;
            }
        }
        Ok(())
    }

    /// Takes back every index mutation of the batch (the rows go with the aborted redb
    /// transaction).
    pub fn undo_index(&mut self, index: &mut TreeIndex) {
        self.undo_index_to(0, index);
        self.changes.clear();
    }

    fn undo_index_to(&mut self, len: usize, index: &mut TreeIndex) {
        while self.undo.len() > len {
            if let Some(undo) = self.undo.pop() {
                index.undo(undo);
            }
        }
    }

    /// How many rows/events the log holds.
    pub fn len(&self) -> usize {
        self.changes.len()
    }

    /// The events from position `from` on.
    pub fn events_since(&self, from: usize) -> impl Iterator<Item = &Event> {
        self.changes
            .get(from..)
            .unwrap_or_default()
            .iter()
            .map(|c| &c.event)
    }

    /// Forgets the undos (the batch is committed) and hands over the events.
    pub fn finish(&mut self) -> Vec<Event> {
        self.undo.clear();
        std::mem::take(&mut self.changes)
            .into_iter()
            .map(|c| c.event)
            .collect()
    }
}
