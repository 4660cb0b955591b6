//! Start-up cleanup of interfaces left by a daemon that did not exit cleanly.

use super::{NetError, Netlink, TAP_GROUP, TAP_PREFIX};

/// Deletes every link named with summond's prefix; returns their names. Links in summond's
/// group go in one batch first; the rest (from a daemon that did not set the group) one by one.
pub async fn remove_leftovers(nl: &Netlink) -> Result<Vec<String>, NetError> {
    let removed: Vec<String> = nl
        .links_with_prefix(TAP_PREFIX)
        .await?
        .into_iter()
        .map(|(_, name)| name)
        .collect();
    if removed.is_empty() {
        return Ok(removed);
    }
    nl.delete_group(TAP_GROUP).await?;
    for (index, _) in nl.links_with_prefix(TAP_PREFIX).await? {
        nl.delete_link(index).await?;
    }
    Ok(removed)
}
