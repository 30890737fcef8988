//! Rendering sources: parsing, whole-set rejection, ordering and the revision digest; inline and
//! ConfigMap sources through a mock API server.

#[path = "source_support/mod.rs"]
mod support;

use std::collections::BTreeMap;

use fleet::source::{
    Document, RenderedSource, SourceError, SourceResolver, render_config_map, render_documents,
    render_inline,
};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::ObjectMeta;
use overseer_crds::fleet::{ConfigMapSource, RolloutSource};
use serde_json::json;
use support::{Expected, mock_client, within};

fn doc(origin: &str, content: &str) -> Document {
    Document {
        origin: origin.into(),
        content: content.into(),
    }
}

const DEPLOY: &str = "\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: shop
spec:
  replicas: 2
";

const SERVICE_AND_CM: &str = "\
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {ports: [{port: 80}]}
---
# an empty document is skipped
---
apiVersion: v1
kind: ConfigMap
metadata: {name: settings, namespace: shop}
data: {a: '1', b: '2'}
";

fn names(r: &RenderedSource) -> Vec<String> {
    r.objects
        .iter()
        .map(|o| {
            format!(
                "{}/{}",
                o.types.as_ref().map(|t| t.kind.as_str()).unwrap_or("?"),
                o.metadata.name.as_deref().unwrap_or("?")
            )
        })
        .collect()
}

#[test]
fn multi_document_yaml_and_json_render_sorted() {
    let json_doc = r#"{"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": {"name": "reader", "namespace": "shop"}, "rules": []}"#;
    let r = render_documents(
        "test",
        [
            doc("a.yaml", DEPLOY),
            doc("b.yaml", SERVICE_AND_CM),
            doc("c.json", json_doc),
        ],
    )
    .expect("renders");
    // Sorted by group (core first), kind, namespace, name.
    assert_eq!(
        names(&r),
        [
            "ConfigMap/settings",
            "Service/web",
            "Deployment/web",
            "Role/reader"
        ]
    );
    assert!(r.revision.starts_with("sha256:"));
    assert_eq!(r.revision.len(), "sha256:".len() + 64);
    assert_eq!(r.objects[0].data["data"], json!({"a": "1", "b": "2"}));
}

#[test]
fn bad_yaml_rejects_the_whole_set_naming_the_document() {
    let broken = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x\n";
    let err = render_documents(
        "test",
        [
            doc("good.yaml", DEPLOY),
            doc(
                "deploy/broken.yaml",
                &format!("{SERVICE_AND_CM}---\n{broken}"),
            ),
        ],
    )
    .unwrap_err();
    assert!(matches!(err, SourceError::Manifest { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("deploy/broken.yaml document 3"), "{msg}");
    assert!(msg.contains("does not parse"), "{msg}");
    assert_eq!(err.category(), "InvalidManifest");
    assert!(!err.is_transient());
}

#[test]
fn objects_without_identity_are_rejected_with_kind_and_name() {
    let no_name = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {namespace: shop}\n";
    let err = render_documents("t", [doc("a.yaml", DEPLOY), doc("b.yaml", no_name)]).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("b.yaml document 0"), "{msg}");
    assert!(msg.contains("Deployment <no name>"), "{msg}");
    assert!(msg.contains("missing metadata.name"), "{msg}");

    let no_kind = "apiVersion: v1\nmetadata: {name: x}\n";
    let err = render_documents("t", [doc("c.yaml", no_kind)]).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("<no kind> x") && msg.contains("missing kind"),
        "{msg}"
    );

    let scalar = "just a string\n";
    let err = render_documents("t", [doc("d.yaml", scalar)]).unwrap_err();
    assert!(
        err.to_string()
            .contains("expected an object, found a string"),
        "{err}"
    );

    let kustomization =
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources: [a.yaml]\n";
    let err = render_documents("t", [doc("kustomization.yaml", kustomization)]).unwrap_err();
    assert!(
        err.to_string().contains("kustomize is not supported"),
        "{err}"
    );
}

#[test]
fn duplicate_objects_are_rejected_naming_both_documents() {
    let err =
        render_documents("t", [doc("one.yaml", DEPLOY), doc("two.yaml", DEPLOY)]).unwrap_err();
    assert!(matches!(err, SourceError::Duplicate { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("apps Deployment shop/web"), "{msg}");
    assert!(
        msg.contains("one.yaml document 0") && msg.contains("two.yaml document 0"),
        "{msg}"
    );
}

#[test]
fn empty_source_is_an_error() {
    let err = render_documents("ConfigMap x/y", [doc("a", "---\n# nothing\n")]).unwrap_err();
    assert!(matches!(err, SourceError::Empty(_)), "{err:?}");
    assert!(err.to_string().contains("ConfigMap x/y"));
}

#[test]
fn revision_is_stable_across_document_file_and_key_order() {
    let a = render_documents("t", [doc("a.yaml", DEPLOY), doc("b.yaml", SERVICE_AND_CM)]).unwrap();
    let b = render_documents("t", [doc("b.yaml", SERVICE_AND_CM), doc("a.yaml", DEPLOY)]).unwrap();
    assert_eq!(a.revision, b.revision);
    assert_eq!(a.objects, b.objects);

    // Same objects, keys in another order, flow vs block style, comments, one file.
    let reordered = "\
kind: ConfigMap
data: {b: '2', a: '1'}
metadata: {namespace: shop, name: settings}
apiVersion: v1
---
spec:
  replicas: 2
metadata: {namespace: shop, name: web}
kind: Deployment
apiVersion: apps/v1
---
# comment
spec:
  ports:
  - port: 80
kind: Service
apiVersion: v1
metadata:
  namespace: shop
  name: web
";
    let c = render_documents("t", [doc("all.yaml", reordered)]).unwrap();
    assert_eq!(a.revision, c.revision);

    // The same set inline (as JSON) digests the same too.
    let inline: Vec<serde_json::Value> = c
        .objects
        .iter()
        .rev()
        .map(|o| serde_json::to_value(o).unwrap())
        .collect();
    assert_eq!(render_inline(&inline).unwrap().revision, a.revision);
}

#[test]
fn revision_changes_with_content() {
    let base = render_documents("t", [doc("a.yaml", DEPLOY)]).unwrap();
    for changed in [
        DEPLOY.replace("replicas: 2", "replicas: 3"),
        DEPLOY.replace("replicas: 2", "replicas: \"2\""),
        DEPLOY.replace("namespace: shop", "namespace: shop2"),
        DEPLOY.replace("name: web", "name: web2"),
        format!("{DEPLOY}  paused: false\n"),
    ] {
        let other = render_documents("t", [doc("a.yaml", &changed)]).unwrap();
        assert_ne!(base.revision, other.revision, "{changed}");
    }
    let more =
        render_documents("t", [doc("a.yaml", DEPLOY), doc("b.yaml", SERVICE_AND_CM)]).unwrap();
    assert_ne!(base.revision, more.revision);
}

#[test]
fn lists_and_inline_items_expand() {
    let list = json!({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "b"}}
    ]});
    let r = render_inline(std::slice::from_ref(&list)).unwrap();
    assert_eq!(names(&r), ["ConfigMap/a", "ConfigMap/b"]);

    let bad = json!({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}},
        {"kind": "ConfigMap", "metadata": {"name": "b"}}
    ]});
    let err = render_inline(&[list, bad]).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("inline[1] items[1]"), "{msg}");
    assert!(msg.contains("missing apiVersion"), "{msg}");
}

fn config_map(data: &[(&str, &str)]) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some("manifests".into()),
            namespace: Some("fleet".into()),
            ..Default::default()
        },
        data: Some(
            data.iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<BTreeMap<_, _>>(),
        ),
        ..Default::default()
    }
}

#[test]
fn config_map_values_render_in_key_order_and_name_the_key() {
    let r = render_config_map(&config_map(&[
        ("z.yaml", DEPLOY),
        ("a.yaml", SERVICE_AND_CM),
    ]))
    .unwrap();
    assert_eq!(names(&r).len(), 3);
    let direct = render_documents("t", [doc("x", DEPLOY), doc("y", SERVICE_AND_CM)]).unwrap();
    assert_eq!(r.revision, direct.revision);

    let err =
        render_config_map(&config_map(&[("a.yaml", DEPLOY), ("b.yaml", "kind: [")])).unwrap_err();
    assert!(
        err.to_string()
            .contains("ConfigMap fleet/manifests key \"b.yaml\" document 0"),
        "{err}"
    );
}

#[tokio::test]
async fn resolver_reads_the_config_map_through_the_api() {
    let cm = config_map(&[("app.yaml", DEPLOY)]);
    let (client, server) = mock_client(vec![Expected::get(
        "/api/v1/namespaces/fleet/configmaps/manifests",
        200,
        serde_json::to_value(&cm).unwrap(),
    )]);
    let dir = tempfile::tempdir().unwrap();
    let resolver = SourceResolver::new(client, dir.path()).unwrap();
    let source = RolloutSource {
        config_map: Some(ConfigMapSource {
            name: "manifests".into(),
        }),
        ..Default::default()
    };
    let r = within(resolver.resolve("fleet", &source)).await.unwrap();
    assert_eq!(names(&r), ["Deployment/web"]);
    assert_eq!(r.revision, render_config_map(&cm).unwrap().revision);
    drop(resolver);
    within(server).await.unwrap();
}

#[tokio::test]
async fn missing_config_map_names_it() {
    let (client, server) = mock_client(vec![Expected::get(
        "/api/v1/namespaces/fleet/configmaps/manifests",
        404,
        support::not_found("configmaps", "manifests"),
    )]);
    let dir = tempfile::tempdir().unwrap();
    let resolver = SourceResolver::new(client, dir.path()).unwrap();
    let source = RolloutSource {
        config_map: Some(ConfigMapSource {
            name: "manifests".into(),
        }),
        ..Default::default()
    };
    let err = within(resolver.resolve("fleet", &source))
        .await
        .unwrap_err();
    assert!(matches!(err, SourceError::NotFound { .. }), "{err:?}");
    assert_eq!(err.to_string(), "ConfigMap fleet/manifests not found");
    assert_eq!(err.category(), "SourceNotFound");
    drop(resolver);
    within(server).await.unwrap();
}

#[tokio::test]
async fn resolver_renders_inline_and_refuses_ambiguous_sources() {
    let (client, server) = mock_client(vec![]);
    let dir = tempfile::tempdir().unwrap();
    let resolver = SourceResolver::new(client, dir.path()).unwrap();
    let inline = RolloutSource {
        inline: Some(vec![
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}),
        ]),
        ..Default::default()
    };
    let r = within(resolver.resolve("fleet", &inline)).await.unwrap();
    assert_eq!(names(&r), ["Namespace/shop"]);

    let both = RolloutSource {
        config_map: Some(ConfigMapSource { name: "x".into() }),
        ..inline
    };
    let err = within(resolver.resolve("fleet", &both)).await.unwrap_err();
    assert!(matches!(err, SourceError::InvalidSource), "{err:?}");
    let none = RolloutSource::default();
    assert!(matches!(
        within(resolver.resolve("fleet", &none)).await.unwrap_err(),
        SourceError::InvalidSource
    ));
    drop(resolver);
    within(server).await.unwrap();
}
