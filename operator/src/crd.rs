//! `overseer crd`: every Overseer CRD as one multi-document YAML stream.

/// The concatenation, in [`overseer_crds::all_crds`] order, of the files `crdgen` writes to
/// `config/crd/bases/` — so `overseer crd | kubectl apply --server-side -f -` installs exactly the
/// committed CRDs.
pub fn render_all() -> String {
    overseer_crds::all_crds()
        .iter()
        .map(overseer_crds::crd_yaml)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_crd_is_one_document() {
        let stream = render_all();
        let documents: Vec<_> = stream.split("\n---\n").skip(1).collect();
        assert_eq!(documents.len(), overseer_crds::all_crds().len());
        for doc in documents {
            assert!(
                doc.starts_with("apiVersion: apiextensions.k8s.io/v1\n"),
                "{doc:.80}"
            );
        }
    }
}
