//! Clean-up of the interfaces a summond on the same host state left behind (a daemon that did
//! not exit cleanly), and of our own at exit. Only links carrying our mark are touched: an
//! operator's own `sm-*` interface, or another daemon's, is never deleted.

use super::{NetError, Netlink, TAP_PREFIX};

/// Deletes every link named with summond's prefix and marked `mark`; returns their names.
pub async fn remove_leftovers(nl: &Netlink, mark: &str) -> Result<Vec<String>, NetError> {
    let mut removed = Vec::new();
    for (index, name) in nl.marked_links(TAP_PREFIX, mark).await? {
        nl.delete_link(index).await?;
        removed.push(name);
    }
    Ok(removed)
}
