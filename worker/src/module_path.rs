//! Module paths: the dotted names (`layer1.0.conv1`) under which a network's
//! parameters live in a `VarStore` and in `camp_proto::arch`, and the tch
//! sub-path for one. A leaf of the engine.

use tch::nn::Path;

/// The path `p` / `dotted` for a dotted module path (`layer1.0`).
pub(crate) fn sub_path<'a>(p: &Path<'a>, dotted: &str) -> Path<'a> {
    let mut parts = dotted.split('.');
    let first = p.sub(parts.next().unwrap_or_default());
    parts.fold(first, |p, part| p.sub(part))
}

/// The module path of `p` (`layer1.0.conv1`).
pub(crate) fn path_of(p: &Path) -> String {
    p.components().collect::<Vec<_>>().join(".")
}
