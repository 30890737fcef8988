//! Per-cluster overrides: selection, RFC 6902 patches, variables and error messages.

use std::collections::BTreeMap;

use fleet::overrides::{OverrideError, render_for_cluster, substitute};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::DynamicObject;
use overseer_crds::fleet::{JsonPatchOp, JsonPatchOpKind, Override, OverrideTarget};
use serde_json::{Value, json};

fn obj(v: Value) -> DynamicObject {
    serde_json::from_value(v).expect("test object")
}

fn objects() -> Vec<DynamicObject> {
    vec![
        obj(json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"replicas": 2, "template": {"spec": {"containers": [
                {"name": "web", "image": "shop/web:1", "env": []}
            ]}}}
        })),
        obj(json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "worker", "namespace": "shop"},
            "spec": {"replicas": 1}
        })),
        obj(json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "settings", "namespace": "shop"},
            "data": {"region": "unset"}
        })),
    ]
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn selector(pairs: &[(&str, &str)]) -> LabelSelector {
    LabelSelector {
        match_labels: Some(labels(pairs)),
        match_expressions: None,
    }
}

fn op(kind: JsonPatchOpKind, path: &str, value: Option<Value>) -> JsonPatchOp {
    JsonPatchOp {
        op: kind,
        path: path.into(),
        from: None,
        value,
    }
}

fn target(group: Option<&str>, kind: &str, name: Option<&str>) -> OverrideTarget {
    OverrideTarget {
        group: group.map(Into::into),
        kind: kind.into(),
        name: name.map(Into::into),
        namespace: None,
    }
}

fn ov(name: &str, sel: LabelSelector, t: OverrideTarget, ops: Vec<JsonPatchOp>) -> Override {
    Override {
        name: name.into(),
        cluster_selector: sel,
        target: t,
        json_patch: ops,
    }
}

fn to_json(objs: &[DynamicObject]) -> Vec<Value> {
    objs.iter()
        .map(|o| serde_json::to_value(o).expect("serializes"))
        .collect()
}

#[test]
fn overrides_apply_only_to_matching_clusters_and_targets() {
    let overrides = vec![ov(
        "prod-replicas",
        selector(&[("env", "prod")]),
        target(Some("apps"), "Deployment", Some("web")),
        vec![op(
            JsonPatchOpKind::Replace,
            "/spec/replicas",
            Some(json!(5)),
        )],
    )];
    let objs = objects();

    let prod = render_for_cluster(&objs, &overrides, "eu-1", &labels(&[("env", "prod")]))
        .expect("applies");
    let prod = to_json(&prod);
    assert_eq!(prod[0]["spec"]["replicas"], json!(5), "web patched");
    assert_eq!(prod[1]["spec"]["replicas"], json!(1), "worker untouched");
    assert_eq!(prod[2], to_json(&objs)[2], "ConfigMap untouched");

    let dev = render_for_cluster(&objs, &overrides, "dev-1", &labels(&[("env", "dev")]))
        .expect("applies");
    assert_eq!(
        to_json(&dev),
        to_json(&objs),
        "non-matching cluster unchanged"
    );
}

#[test]
fn target_without_name_patches_every_object_of_the_kind_and_group_filters() {
    let all = vec![ov(
        "all-deployments",
        LabelSelector::default(),
        target(None, "Deployment", None),
        vec![op(
            JsonPatchOpKind::Add,
            "/metadata/labels",
            Some(json!({"fleet": "yes"})),
        )],
    )];
    let out = to_json(&render_for_cluster(&objects(), &all, "c", &BTreeMap::new()).expect("ok"));
    assert_eq!(out[0]["metadata"]["labels"]["fleet"], "yes");
    assert_eq!(out[1]["metadata"]["labels"]["fleet"], "yes");
    assert!(out[2]["metadata"].get("labels").is_none());

    // group "" is the core group: no Deployment there.
    let core = vec![ov(
        "core-deployments",
        LabelSelector::default(),
        target(Some(""), "Deployment", None),
        vec![op(JsonPatchOpKind::Remove, "/spec", None)],
    )];
    let err = render_for_cluster(&objects(), &core, "c", &BTreeMap::new()).unwrap_err();
    assert!(
        matches!(err, OverrideError::NoMatchingObject { index: 0, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("core-deployments"), "{err}");
}

#[test]
fn variables_are_replaced_with_cluster_name_and_labels() {
    let overrides = vec![ov(
        "region",
        LabelSelector::default(),
        target(None, "ConfigMap", Some("settings")),
        vec![
            op(
                JsonPatchOpKind::Replace,
                "/data/region",
                Some(json!("${CLUSTER_LABEL[topology.kubernetes.io/region]}")),
            ),
            op(
                JsonPatchOpKind::Add,
                "/data/cluster",
                Some(json!(
                    "name=${CLUSTER_NAME}, literal=$${CLUSTER_NAME}, cost=$5"
                )),
            ),
            op(
                JsonPatchOpKind::Add,
                "/data/nested",
                Some(json!({"list": ["${CLUSTER_NAME}", 3]})),
            ),
        ],
    )];
    // `nested` is not a string map value in a real ConfigMap, but the patch itself is generic.
    let out = render_for_cluster(
        &objects(),
        &overrides,
        "edge-7",
        &labels(&[("topology.kubernetes.io/region", "eu-west")]),
    )
    .expect("applies");
    let cm = &to_json(&out)[2];
    assert_eq!(cm["data"]["region"], "eu-west");
    assert_eq!(
        cm["data"]["cluster"],
        "name=edge-7, literal=${CLUSTER_NAME}, cost=$5"
    );
    assert_eq!(cm["data"]["nested"], json!({"list": ["edge-7", 3]}));
}

#[test]
fn unknown_variable_is_rejected_by_name() {
    let overrides = vec![ov(
        "bad-var",
        LabelSelector::default(),
        target(None, "ConfigMap", None),
        vec![op(
            JsonPatchOpKind::Replace,
            "/data/region",
            Some(json!("${CLUSTER_REGION}")),
        )],
    )];
    let err = render_for_cluster(&objects(), &overrides, "c", &BTreeMap::new()).unwrap_err();
    assert!(
        matches!(
            err,
            OverrideError::Variable {
                index: 0,
                op: 0,
                ..
            }
        ),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(msg.contains("${CLUSTER_REGION}"), "{msg}");
    assert!(msg.contains("bad-var"), "{msg}");
    assert_eq!(err.category(), "InvalidVariable");
}

#[test]
fn missing_label_and_unterminated_variable_are_errors() {
    let labels_none = BTreeMap::new();
    let err = substitute("${CLUSTER_LABEL[ring]}", "c1", &labels_none).unwrap_err();
    assert!(err.contains("\"ring\"") && err.contains("c1"), "{err}");
    let err = substitute("x-${CLUSTER_NAME", "c1", &labels_none).unwrap_err();
    assert!(err.contains("unterminated"), "{err}");
    assert_eq!(
        substitute("plain $ text", "c1", &labels_none).as_deref(),
        Ok("plain $ text")
    );
}

#[test]
fn failing_patch_names_override_object_and_operation() {
    let overrides = vec![
        ov(
            "ok",
            LabelSelector::default(),
            target(None, "Deployment", Some("worker")),
            vec![op(
                JsonPatchOpKind::Replace,
                "/spec/replicas",
                Some(json!(3)),
            )],
        ),
        ov(
            "broken",
            LabelSelector::default(),
            target(Some("apps"), "Deployment", Some("web")),
            vec![
                op(JsonPatchOpKind::Replace, "/spec/replicas", Some(json!(4))),
                op(
                    JsonPatchOpKind::Replace,
                    "/spec/template/spec/containers/5/image",
                    Some(json!("x")),
                ),
            ],
        ),
    ];
    let err = render_for_cluster(&objects(), &overrides, "c", &BTreeMap::new()).unwrap_err();
    match &err {
        OverrideError::Patch {
            index, op, object, ..
        } => {
            assert_eq!(*index, 1);
            assert_eq!(*op, 1);
            assert_eq!(object, "apps/v1 Deployment shop/web");
        }
        other => panic!("expected a Patch error, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(msg.contains("overrides[1]"), "{msg}");
    assert!(msg.contains("\"broken\""), "{msg}");
    assert!(msg.contains("jsonPatch[1]"), "{msg}");
    assert!(
        msg.contains("replace /spec/template/spec/containers/5/image"),
        "{msg}"
    );
    assert_eq!(err.category(), "PatchFailed");
}

#[test]
fn failed_test_operation_is_a_patch_error() {
    let overrides = vec![ov(
        "guard",
        LabelSelector::default(),
        target(None, "Deployment", Some("web")),
        vec![
            op(JsonPatchOpKind::Test, "/spec/replicas", Some(json!(99))),
            op(JsonPatchOpKind::Replace, "/spec/replicas", Some(json!(1))),
        ],
    )];
    let err = render_for_cluster(&objects(), &overrides, "c", &BTreeMap::new()).unwrap_err();
    assert!(matches!(err, OverrideError::Patch { op: 0, .. }), "{err:?}");
    assert!(err.to_string().contains("test /spec/replicas"), "{err}");
}

#[test]
fn patch_removing_identity_is_rejected() {
    let overrides = vec![ov(
        "drop-name",
        LabelSelector::default(),
        target(None, "ConfigMap", None),
        vec![op(JsonPatchOpKind::Remove, "/metadata/name", None)],
    )];
    let err = render_for_cluster(&objects(), &overrides, "c", &BTreeMap::new()).unwrap_err();
    assert!(
        matches!(err, OverrideError::InvalidResult { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("metadata.name"), "{err}");
}

#[test]
fn overrides_apply_in_order_and_move_copy_work() {
    let overrides = vec![
        ov(
            "first",
            LabelSelector::default(),
            target(None, "ConfigMap", None),
            vec![op(JsonPatchOpKind::Add, "/data/a", Some(json!("1")))],
        ),
        ov(
            "second",
            LabelSelector::default(),
            target(None, "ConfigMap", None),
            vec![
                JsonPatchOp {
                    op: JsonPatchOpKind::Copy,
                    path: "/data/b".into(),
                    from: Some("/data/a".into()),
                    value: None,
                },
                JsonPatchOp {
                    op: JsonPatchOpKind::Move,
                    path: "/data/c".into(),
                    from: Some("/data/a".into()),
                    value: None,
                },
            ],
        ),
    ];
    let out = to_json(&render_for_cluster(&objects(), &overrides, "c", &BTreeMap::new()).unwrap());
    assert_eq!(
        out[2]["data"],
        json!({"region": "unset", "b": "1", "c": "1"})
    );
}

#[test]
fn invalid_selector_and_missing_from_are_reported() {
    let bad_selector = LabelSelector {
        match_labels: None,
        match_expressions: Some(vec![
            k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement {
                key: "env".into(),
                operator: "Sideways".into(),
                values: None,
            },
        ]),
    };
    let overrides = vec![ov(
        "sel",
        bad_selector,
        target(None, "ConfigMap", None),
        vec![op(JsonPatchOpKind::Remove, "/data", None)],
    )];
    let err = render_for_cluster(&objects(), &overrides, "c", &BTreeMap::new()).unwrap_err();
    assert!(
        matches!(err, OverrideError::Selector { index: 0, .. }),
        "{err:?}"
    );

    let overrides = vec![ov(
        "no-from",
        LabelSelector::default(),
        target(None, "ConfigMap", None),
        vec![op(JsonPatchOpKind::Move, "/data/x", None)],
    )];
    let err = render_for_cluster(&objects(), &overrides, "c", &BTreeMap::new()).unwrap_err();
    assert!(
        matches!(err, OverrideError::InvalidOperation { .. }),
        "{err:?}"
    );

    let overrides = vec![ov(
        "bad-pointer",
        LabelSelector::default(),
        target(None, "ConfigMap", None),
        vec![op(JsonPatchOpKind::Add, "data/x", Some(json!("v")))],
    )];
    let err = render_for_cluster(&objects(), &overrides, "c", &BTreeMap::new()).unwrap_err();
    assert!(
        matches!(err, OverrideError::InvalidOperation { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("bad-pointer"), "{err}");
}

#[test]
fn self_copy_growth_is_refused_past_the_size_limit() {
    // Each `copy /spec -> /spec/a<i>` (a new key each time) doubles the object; 16 of them would
    // make it megabytes (and the 64 the CRD allows would exhaust memory), so the patch stops at
    // the 1 MiB bound.
    let copies = |count: usize| -> Vec<JsonPatchOp> {
        (0..count)
            .map(|i| JsonPatchOp {
                op: JsonPatchOpKind::Copy,
                path: format!("/spec/a{i}"),
                from: Some("/spec".into()),
                value: None,
            })
            .collect()
    };
    for count in [16, 64] {
        let overrides = vec![ov(
            "grow",
            LabelSelector::default(),
            target(Some("apps"), "Deployment", Some("web")),
            copies(count),
        )];
        let err = render_for_cluster(&objects(), &overrides, "c", &BTreeMap::new()).unwrap_err();
        match &err {
            OverrideError::TooLarge {
                index, op, limit, ..
            } => {
                assert_eq!(*index, 0);
                assert!(*op < 16, "stopped at jsonPatch[{op}]");
                assert_eq!(*limit, fleet::overrides::MAX_PATCHED_OBJECT_BYTES);
            }
            other => panic!("expected TooLarge, got {other:?}"),
        }
        assert_eq!(err.category(), "PatchTooLarge");
        let msg = err.to_string();
        assert!(msg.contains("copy /spec -> /spec/a"), "{msg}");
        assert!(msg.contains("larger than 1048576 bytes"), "{msg}");
        assert!(msg.contains("apps/v1 Deployment shop/web"), "{msg}");
    }
    // A handful of copies stays well under the bound and applies.
    let overrides = vec![ov(
        "grow-a-little",
        LabelSelector::default(),
        target(Some("apps"), "Deployment", Some("web")),
        copies(3),
    )];
    render_for_cluster(&objects(), &overrides, "c", &BTreeMap::new()).expect("small growth");
}

#[test]
fn the_revision_covers_the_overrides() {
    use fleet::overrides::revision_with_overrides;
    let a = vec![ov(
        "a",
        LabelSelector::default(),
        target(None, "ConfigMap", None),
        vec![op(JsonPatchOpKind::Add, "/data/a", Some(json!("1")))],
    )];
    let mut b = a.clone();
    b[0].json_patch[0].value = Some(json!("2"));
    // No overrides: the source's revision as it was.
    assert_eq!(revision_with_overrides("sha256:src", &[]), "sha256:src");
    let ra = revision_with_overrides("sha256:src", &a);
    assert!(ra.starts_with("sha256:") && ra != "sha256:src", "{ra}");
    assert_eq!(ra, revision_with_overrides("sha256:src", &a), "stable");
    assert_ne!(ra, revision_with_overrides("sha256:src", &b));
    assert_ne!(ra, revision_with_overrides("sha256:other", &a));
}
