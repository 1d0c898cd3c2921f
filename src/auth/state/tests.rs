use concord_proto::etcdserverpb::{
    AuthDisableRequest, AuthEnableRequest, AuthRoleAddRequest, AuthRoleDeleteRequest,
    AuthRoleGrantPermissionRequest, AuthRoleRevokePermissionRequest, AuthUserAddRequest,
    AuthUserChangePasswordRequest, AuthUserDeleteRequest, AuthUserGrantRoleRequest,
    AuthUserRevokeRoleRequest,
};

use super::*;

fn user_add(name: &str) -> Change {
    Change::UserAdd(AuthUserAddRequest {
        name: name.into(),
        hashed_password: "aGFzaA==".into(),
        ..Default::default()
    })
}

fn grant_role(user: &str, role: &str) -> Change {
    Change::UserGrantRole(AuthUserGrantRoleRequest {
        user: user.into(),
        role: role.into(),
    })
}

fn role_add(name: &str) -> Change {
    Change::RoleAdd(AuthRoleAddRequest { name: name.into() })
}

fn grant(role: &str, perm_type: concord_proto::authpb::permission::Type, key: &str, end: &str) -> Change {
    Change::RoleGrantPermission(AuthRoleGrantPermissionRequest {
        name: role.into(),
        perm: Some(Permission {
            perm_type: perm_type as i32,
            key: key.into(),
            range_end: end.into(),
        }),
    })
}

fn enable() -> Change {
    Change::Enable(AuthEnableRequest {})
}

#[test]
fn enabling_needs_a_root_user_with_the_root_role() {
    let mut state = AuthState::default();
    assert_eq!(state.apply(&enable()), Err(AuthError::RootUserNotExist));
    state.apply(&user_add("root")).unwrap();
    assert_eq!(state.apply(&enable()), Err(AuthError::RootRoleNotExist));
    // The root role need not exist to be granted (etcdctl adds it, etcd does not require it).
    state.apply(&grant_role("root", ROOT)).unwrap();
    let before = state.revision();
    assert!(state.apply(&enable()).unwrap().changed);
    assert!(state.enabled() && state.revision() == before + 1);
    assert!(
        !state.apply(&enable()).unwrap().changed,
        "enabling twice is no error"
    );
    assert!(state.is_root("root"));
    // While on, root cannot be deleted nor lose its role.
    let delete_root = Change::UserDelete(AuthUserDeleteRequest { name: "root".into() });
    assert_eq!(state.apply(&delete_root), Err(AuthError::InvalidAuthMgmt));
    let revoke_root = Change::UserRevokeRole(AuthUserRevokeRoleRequest {
        name: "root".into(),
        role: ROOT.into(),
    });
    assert_eq!(state.apply(&revoke_root), Err(AuthError::InvalidAuthMgmt));
    let outcome = state.apply(&Change::Disable(AuthDisableRequest {})).unwrap();
    assert!(outcome.disabled && !state.enabled());
    assert!(state.apply(&delete_root).is_ok(), "allowed once auth is off");
}

#[test]
fn users_and_roles_are_refused_as_etcd_refuses_them() {
    use concord_proto::authpb::permission::Type;
    let mut state = AuthState::default();
    assert_eq!(state.apply(&user_add("")), Err(AuthError::UserEmpty));
    state.apply(&user_add("alice")).unwrap();
    assert_eq!(state.apply(&user_add("alice")), Err(AuthError::UserAlreadyExist));
    assert_eq!(state.apply(&role_add("")), Err(AuthError::RoleEmpty));
    let long = "n".repeat(MAX_NAME_BYTES + 1);
    assert_eq!(state.apply(&user_add(&long)), Err(AuthError::NameTooLong));
    assert_eq!(state.apply(&role_add(&long)), Err(AuthError::NameTooLong));
    state.apply(&role_add(&long[1..])).unwrap();
    state.apply(&role_add("reader")).unwrap();
    assert_eq!(state.apply(&role_add("reader")), Err(AuthError::RoleAlreadyExist));
    assert_eq!(
        state.apply(&grant_role("bob", "reader")),
        Err(AuthError::UserNotFound)
    );
    assert_eq!(
        state.apply(&grant_role("alice", "nosuch")),
        Err(AuthError::RoleNotFound)
    );
    state.apply(&grant_role("alice", "reader")).unwrap();
    assert!(!state.apply(&grant_role("alice", "reader")).unwrap().changed);
    assert_eq!(
        state.apply(&grant("nosuch", Type::Read, "a", "")),
        Err(AuthError::RoleNotFound)
    );
    assert_eq!(
        state.apply(&grant("reader", Type::Read, "b", "a")),
        Err(AuthError::InvalidAuthMgmt)
    );
    let no_perm = Change::RoleGrantPermission(AuthRoleGrantPermissionRequest {
        name: "reader".into(),
        perm: None,
    });
    assert_eq!(state.apply(&no_perm), Err(AuthError::PermissionNotGiven));
    let revoke = |key: &str| {
        Change::RoleRevokePermission(AuthRoleRevokePermissionRequest {
            role: "reader".into(),
            key: key.into(),
            range_end: vec![],
        })
    };
    assert_eq!(state.apply(&revoke("foo")), Err(AuthError::PermissionNotGranted));
    let revoke_role = Change::UserRevokeRole(AuthUserRevokeRoleRequest {
        name: "alice".into(),
        role: "writer".into(),
    });
    assert_eq!(state.apply(&revoke_role), Err(AuthError::RoleNotGranted));
    let password = Change::UserChangePassword(AuthUserChangePasswordRequest {
        name: "bob".into(),
        hashed_password: "aGFzaA==".into(),
        ..Default::default()
    });
    assert_eq!(state.apply(&password), Err(AuthError::UserNotFound));
    assert_eq!(
        state.apply(&Change::RoleDelete(AuthRoleDeleteRequest {
            role: "nosuch".into()
        })),
        Err(AuthError::RoleNotFound)
    );
}

#[test]
fn permissions_follow_roles_through_every_change() {
    use concord_proto::authpb::permission::Type;
    let mut state = AuthState::default();
    for change in [
        user_add("alice"),
        role_add("reader"),
        grant("reader", Type::Read, "foo", ""),
        grant("reader", Type::Readwrite, "app/", "app0"),
        grant_role("alice", "reader"),
    ] {
        state.apply(&change).unwrap();
    }
    assert!(state.allows("alice", Access::Read, b"foo", b""));
    assert!(!state.allows("alice", Access::Write, b"foo", b""));
    assert!(state.allows("alice", Access::Write, b"app/x", b""));
    assert!(!state.allows("bob", Access::Read, b"foo", b""));
    // Granting the same range again updates its type.
    state.apply(&grant("reader", Type::Readwrite, "foo", "")).unwrap();
    assert!(state.allows("alice", Access::Write, b"foo", b""));
    assert_eq!(state.role("reader").unwrap().key_permission.len(), 2);
    // Deleting the role takes it from its users.
    state
        .apply(&Change::RoleDelete(AuthRoleDeleteRequest {
            role: "reader".into(),
        }))
        .unwrap();
    assert!(state.user("alice").unwrap().roles.is_empty());
    assert!(!state.allows("alice", Access::Read, b"foo", b""));
}

#[test]
fn a_password_change_and_a_deletion_invalidate_the_users_tokens() {
    let mut state = AuthState::default();
    state.apply(&user_add("alice")).unwrap();
    let password = Change::UserChangePassword(AuthUserChangePasswordRequest {
        name: "alice".into(),
        hashed_password: "bmV3".into(),
        ..Default::default()
    });
    let outcome = state.apply(&password).unwrap();
    assert_eq!(outcome.invalidated_user.as_deref(), Some("alice"));
    assert_eq!(state.user("alice").unwrap().password, b"new");
    let delete = Change::UserDelete(AuthUserDeleteRequest { name: "alice".into() });
    assert_eq!(
        state.apply(&delete).unwrap().invalidated_user.as_deref(),
        Some("alice")
    );
    assert_eq!(state.apply(&delete), Err(AuthError::UserNotFound));
}

#[test]
fn a_user_without_a_password_stores_none() {
    let mut state = AuthState::default();
    let add = Change::UserAdd(AuthUserAddRequest {
        name: "svc".into(),
        options: Some(UserAddOptions { no_password: true }),
        ..Default::default()
    });
    state.apply(&add).unwrap();
    assert!(state.user("svc").unwrap().password.is_empty());
    let bad = Change::UserAdd(AuthUserAddRequest {
        name: "x".into(),
        hashed_password: "not base64!".into(),
        ..Default::default()
    });
    assert_eq!(state.apply(&bad), Err(AuthError::InvalidAuthMgmt));
}
