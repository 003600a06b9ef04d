//! Class names. timm checkpoints carry no label names and rely on the standard ImageNet-1k list,
//! so that list is compiled in.

const IMAGENET1K: &str = include_str!("../assets/imagenet1k_labels.txt");

/// The 1000 ImageNet-1k class names in index order.
pub fn imagenet1k() -> Vec<String> {
    IMAGENET1K.lines().map(str::to_string).collect()
}
