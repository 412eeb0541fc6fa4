//! Byte-exact tests of the NLDEV encoder and decoder (little-endian hosts).

use super::*;

// ---------------------------------------------------------------- helpers that
// build kernel-style replies by hand (independent of MsgBuilder)

fn nla(ty: u16, data: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&((4 + data.len()) as u16).to_le_bytes());
    v.extend_from_slice(&ty.to_le_bytes());
    v.extend_from_slice(data);
    while v.len() % 4 != 0 {
        v.push(0);
    }
    v
}

fn nla_str(ty: u16, s: &str) -> Vec<u8> {
    let mut d = s.as_bytes().to_vec();
    d.push(0);
    nla(ty, &d)
}

fn nlmsg(ty: u16, flags: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&((16 + payload.len()) as u32).to_le_bytes());
    v.extend_from_slice(&ty.to_le_bytes());
    v.extend_from_slice(&flags.to_le_bytes());
    v.extend_from_slice(&seq.to_le_bytes());
    v.extend_from_slice(&4321u32.to_le_bytes()); // the kernel's reply carries our port id
    v.extend_from_slice(payload);
    while v.len() % 4 != 0 {
        v.push(0);
    }
    v
}

fn ack(seq: u32, error: i32, req_type: u16) -> Vec<u8> {
    let mut p = error.to_le_bytes().to_vec();
    p.extend_from_slice(&nlmsg(req_type, DOIT, seq, &[])[..16]);
    nlmsg(nlm::ERROR, nlm::F_CAPPED, seq, &p)
}

fn done(seq: u32) -> Vec<u8> {
    nlmsg(nlm::DONE, nlm::F_MULTI, seq, &0i32.to_le_bytes())
}

/// A device entry as `fill_dev_info` sends it, with PAD attributes before the
/// 64-bit values and attributes this code does not know.
fn mlx5_device(index: u32, name: &str, guid: u64) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend(nla(attr::DEV_INDEX, &index.to_le_bytes()));
    p.extend(nla_str(attr::DEV_NAME, name));
    p.extend(nla(attr::PORT_INDEX, &1u32.to_le_bytes()));
    p.extend(nla(attr::PAD, &[]));
    p.extend(nla(
        attr::CAP_FLAGS,
        &0x0001_2c9e_0000_1c76u64.to_le_bytes(),
    ));
    p.extend(nla_str(attr::FW_VERSION, "28.39.1002"));
    p.extend(nla(attr::PAD, &[]));
    p.extend(nla(attr::NODE_GUID, &guid.to_le_bytes()));
    p.extend(nla(attr::PAD, &[]));
    p.extend(nla(attr::SYS_IMAGE_GUID, &guid.to_le_bytes()));
    p.extend(nla(attr::DEV_NODE_TYPE, &[1]));
    p.extend(nla(attr::DEV_DIM, &[1])); // known to the kernel, not to us
    p.extend(nla_str(attr::DEV_PROTOCOL, "roce"));
    p.extend(nla(999, &[0xde, 0xad, 0xbe, 0xef, 0x01])); // unknown, odd length
    p.extend(nla(0x8000 | 200, &nla(1, &7u32.to_le_bytes()))); // unknown nested
    p
}

// ---------------------------------------------------------------- encoding

#[test]
fn message_types_are_client_shifted_ops() {
    assert_eq!(msg_type(cmd::GET), 0x1401);
    assert_eq!(msg_type(cmd::SET), 0x1402);
    assert_eq!(msg_type(cmd::PORT_GET), 0x1405);
    assert_eq!(msg_type(cmd::SYS_GET), 0x1406);
    assert_eq!(msg_type(cmd::SYS_SET), 0x1407);
}

#[test]
fn sys_get_request_bytes() {
    assert_eq!(
        sys_get_request(1),
        [
            0x10, 0, 0, 0, // nlmsg_len 16
            0x06, 0x14, // type (5 << 10) + 6
            0x05, 0x00, // NLM_F_REQUEST | NLM_F_ACK
            1, 0, 0, 0, // seq
            0, 0, 0, 0, // port id
        ]
    );
}

#[test]
fn sys_set_netns_mode_request_bytes() {
    let expect = |mode: u8| {
        vec![
            0x18, 0, 0, 0, // 24 bytes
            0x07, 0x14, // SYS_SET
            0x05, 0x00, // REQUEST | ACK
            2, 0, 0, 0, 0, 0, 0, 0, // seq 2, port id 0
            0x05, 0x00, 0x42, 0x00, // nla_len 5, type 66 NETNS_MODE
            mode, 0, 0, 0, // u8 + padding
        ]
    };
    assert_eq!(sys_set_netns_mode_request(2, true), expect(1));
    assert_eq!(sys_set_netns_mode_request(2, false), expect(0));
}

#[test]
fn get_dump_request_bytes() {
    assert_eq!(
        get_dump_request(3),
        [
            0x10, 0, 0, 0, // 16
            0x01, 0x14, // GET
            0x05, 0x03, // REQUEST | ACK | ROOT | MATCH (dump)
            3, 0, 0, 0, 0, 0, 0, 0,
        ]
    );
}

#[test]
fn port_dump_request_bytes() {
    assert_eq!(
        port_dump_request(4, 7),
        [
            0x18, 0, 0, 0, 0x05, 0x14, 0x05, 0x03, 4, 0, 0, 0, 0, 0, 0, 0, //
            0x08, 0x00, 0x01, 0x00, 7, 0, 0, 0, // DEV_INDEX 7
        ]
    );
}

#[test]
fn move_request_bytes() {
    assert_eq!(
        move_request(5, 3, 9),
        [
            0x20, 0, 0, 0, // 32
            0x02, 0x14, // SET
            0x05, 0x00, 5, 0, 0, 0, 0, 0, 0, 0, //
            0x08, 0x00, 0x01, 0x00, 3, 0, 0, 0, // DEV_INDEX 3
            0x08, 0x00, 0x44, 0x00, 9, 0, 0, 0, // NET_NS_FD (68) 9
        ]
    );
}

#[test]
fn rename_request_bytes() {
    assert_eq!(
        rename_request(6, 3, "rdma0"),
        [
            0x24, 0, 0, 0, // 36
            0x02, 0x14, 0x05, 0x00, 6, 0, 0, 0, 0, 0, 0, 0, //
            0x08, 0x00, 0x01, 0x00, 3, 0, 0, 0, // DEV_INDEX 3
            0x0a, 0x00, 0x02, 0x00, b'r', b'd', b'm', b'a', b'0', 0, 0,
            0, // DEV_NAME "rdma0\0" + pad
        ]
    );
}

#[test]
fn device_names_are_validated() {
    assert!(validate_device_name("mlx5_0").is_ok());
    assert!(validate_device_name(&"a".repeat(63)).is_ok());
    for bad in [
        "",
        ".",
        "..",
        "a b",
        "a/b",
        "mlx5_%d",
        "tab\t",
        "é",
        &"a".repeat(64),
    ] {
        assert!(validate_device_name(bad).is_err(), "{bad:?} accepted");
    }
}

// ---------------------------------------------------------------- decoding

#[test]
fn sys_get_reply_then_ack() {
    let req = sys_get_request(11);
    // The reply, literally: header, NETNS_MODE=1, COPY_ON_FORK=1 (attr 93), an
    // unknown u8 attribute 94.
    #[rustfmt::skip]
    let reply: Vec<u8> = vec![
        0x28, 0, 0, 0, 0x06, 0x14, 0x00, 0x00, 11, 0, 0, 0, 0xe1, 0x10, 0, 0,
        0x05, 0x00, 0x42, 0x00, 0x01, 0, 0, 0,
        0x05, 0x00, 0x5d, 0x00, 0x01, 0, 0, 0,
        0x05, 0x00, 0x5e, 0x00, 0x00, 0, 0, 0,
    ];
    let mut dgram = reply.clone();
    dgram.extend(ack(11, 0, msg_type(cmd::SYS_GET)));
    let mut ex = Exchange::new(&req);
    assert_eq!(ex.feed(&dgram), Ok(true));
    assert_eq!(ex.replies.len(), 1);
    let sys = decode_sys(&ex.replies[0]).unwrap();
    assert_eq!(
        sys,
        SysInfo {
            netns_shared: Some(true),
            copy_on_fork: Some(true)
        }
    );
    let excl = nlmsg(
        msg_type(cmd::SYS_GET),
        0,
        1,
        &nla(attr::SYS_NETNS_MODE, &[0]),
    );
    assert_eq!(decode_sys(&excl[16..]).unwrap().netns_shared, Some(false));
}

#[test]
fn reply_and_ack_in_separate_datagrams_and_stale_messages_are_skipped() {
    let req = sys_get_request(20);
    let mut ex = Exchange::new(&req);
    // A late reply to an earlier request (seq 19) is ignored.
    let stale = nlmsg(
        msg_type(cmd::SYS_GET),
        0,
        19,
        &nla(attr::SYS_NETNS_MODE, &[0]),
    );
    assert_eq!(ex.feed(&stale), Ok(false));
    assert_eq!(ex.feed(&nlmsg(nlm::NOOP, 0, 20, &[])), Ok(false));
    let ours = nlmsg(
        msg_type(cmd::SYS_GET),
        0,
        20,
        &nla(attr::SYS_NETNS_MODE, &[1]),
    );
    assert_eq!(ex.feed(&ours), Ok(false));
    assert!(!ex.is_done());
    assert_eq!(ex.feed(&ack(20, 0, msg_type(cmd::SYS_GET))), Ok(true));
    assert_eq!(ex.replies.len(), 1);
    assert_eq!(decode_sys(&ex.replies[0]).unwrap().netns_shared, Some(true));
}

#[test]
fn get_dump_with_two_devices() {
    let req = get_dump_request(30);
    let mut d1 = nlmsg(
        msg_type(cmd::GET),
        nlm::F_MULTI,
        30,
        &mlx5_device(0, "mlx5_0", 0x0c42_a103_0065_7a8e),
    );
    d1.extend(nlmsg(
        msg_type(cmd::GET),
        nlm::F_MULTI,
        30,
        &mlx5_device(5, "mlx5_1", 0x0c42_a103_0065_7a8f),
    ));
    let mut ex = Exchange::new(&req);
    assert_eq!(ex.feed(&d1), Ok(false));
    assert_eq!(ex.feed(&done(30)), Ok(true));
    let links: Vec<RdmaLink> = ex.replies.iter().map(|p| decode_link(p).unwrap()).collect();
    assert_eq!(links.len(), 2);
    let l = &links[0];
    assert_eq!((l.index, l.name.as_str()), (0, "mlx5_0"));
    assert_eq!(l.port_count, Some(1));
    assert_eq!(l.fw_version.as_deref(), Some("28.39.1002"));
    assert_eq!(
        l.node_guid.map(format_guid).as_deref(),
        Some("0c42:a103:0065:7a8e")
    );
    assert_eq!(l.node_type.map(node_type_name).as_deref(), Some("ca"));
    assert_eq!(l.protocol.as_deref(), Some("roce"));
    assert_eq!(l.cap_flags, Some(0x0001_2c9e_0000_1c76));
    assert_eq!((links[1].index, links[1].name.as_str()), (5, "mlx5_1"));
}

#[test]
fn empty_dump_is_just_done() {
    let mut ex = Exchange::new(&get_dump_request(31));
    assert_eq!(ex.feed(&done(31)), Ok(true));
    assert!(ex.replies.is_empty());
}

#[test]
fn port_entry_with_netdev() {
    let mut p = Vec::new();
    p.extend(nla(attr::DEV_INDEX, &5u32.to_le_bytes()));
    p.extend(nla_str(attr::DEV_NAME, "mlx5_1"));
    p.extend(nla(attr::PORT_INDEX, &1u32.to_le_bytes()));
    p.extend(nla(attr::PAD, &[]));
    p.extend(nla(
        attr::SUBNET_PREFIX,
        &0xfe80_0000_0000_0000u64.to_le_bytes(),
    ));
    p.extend(nla(attr::LID, &0u32.to_le_bytes()));
    p.extend(nla(attr::SM_LID, &0u32.to_le_bytes()));
    p.extend(nla(attr::LMC, &[0]));
    p.extend(nla(attr::PORT_STATE, &[4]));
    p.extend(nla(attr::PORT_PHYS_STATE, &[5]));
    p.extend(nla(attr::NDEV_INDEX, &4u32.to_le_bytes()));
    p.extend(nla_str(attr::NDEV_NAME, "ens1f1np1"));
    let port = decode_port(&p).unwrap();
    assert_eq!(port.dev_index, 5);
    assert_eq!(port.port, 1);
    assert_eq!(
        port.state.map(u32::from).map(port_state_name).as_deref(),
        Some("active")
    );
    assert_eq!(
        port.phys_state.map(phys_state_name).as_deref(),
        Some("link_up")
    );
    assert_eq!(port.netdev_index, Some(4));
    assert_eq!(port.netdev.as_deref(), Some("ens1f1np1"));
    assert_eq!(port.subnet_prefix, Some(0xfe80_0000_0000_0000));
}

#[test]
fn error_with_extended_ack_capped() {
    let req = move_request(40, 3, 9);
    let mut p = (-libc::EOPNOTSUPP).to_le_bytes().to_vec();
    p.extend_from_slice(&req[..16]); // capped: header only
    p.extend(nla_str(
        nlm::ERR_ATTR_MSG,
        "Device is not in exclusive netns mode",
    ));
    p.extend(nla(nlm::ERR_ATTR_OFFS, &24u32.to_le_bytes()));
    let msg = nlmsg(nlm::ERROR, nlm::F_CAPPED | nlm::F_ACK_TLVS, 40, &p);
    let mut ex = Exchange::new(&req);
    assert_eq!(
        ex.feed(&msg),
        Err(FeedError::Kernel(KernelError {
            errno: libc::EOPNOTSUPP,
            message: "Device is not in exclusive netns mode".into()
        }))
    );
    let a = decode_ack(nlm::F_CAPPED | nlm::F_ACK_TLVS, &msg[16..]).unwrap();
    assert_eq!(a.offset, Some(24));
}

#[test]
fn error_with_extended_ack_echoing_the_whole_request() {
    let req = rename_request(41, 3, "rdma0");
    let mut p = (-libc::EEXIST).to_le_bytes().to_vec();
    p.extend_from_slice(&req); // not capped: the whole request (36 bytes)
    p.extend(nla_str(nlm::ERR_ATTR_MSG, "name in use"));
    let msg = nlmsg(nlm::ERROR, nlm::F_ACK_TLVS, 41, &p);
    let mut ex = Exchange::new(&req);
    match ex.feed(&msg) {
        Err(FeedError::Kernel(k)) => {
            assert_eq!((k.errno, k.message.as_str()), (libc::EEXIST, "name in use"))
        }
        other => panic!("{other:?}"),
    }
    // Without TLVs: the errno alone.
    let mut plain = (-libc::EPERM).to_le_bytes().to_vec();
    plain.extend_from_slice(&req);
    let mut ex = Exchange::new(&req);
    assert_eq!(
        ex.feed(&nlmsg(nlm::ERROR, 0, 41, &plain)),
        Err(FeedError::Kernel(KernelError {
            errno: libc::EPERM,
            message: String::new()
        }))
    );
}

#[test]
fn dump_error_in_done() {
    let mut ex = Exchange::new(&port_dump_request(42, 1));
    let mut p = (-libc::EINVAL).to_le_bytes().to_vec();
    p.extend(nla_str(nlm::ERR_ATTR_MSG, "bad index"));
    let msg = nlmsg(nlm::DONE, nlm::F_MULTI | nlm::F_ACK_TLVS, 42, &p);
    assert_eq!(
        ex.feed(&msg),
        Err(FeedError::Kernel(KernelError {
            errno: libc::EINVAL,
            message: "bad index".into()
        }))
    );
}

#[test]
fn unexpected_message_type_is_an_error() {
    let mut ex = Exchange::new(&sys_get_request(43));
    let other = nlmsg(msg_type(cmd::GET), 0, 43, &[]);
    assert!(matches!(ex.feed(&other), Err(FeedError::Decode(_))));
    let mut ex = Exchange::new(&get_dump_request(44));
    assert!(matches!(
        ex.feed(&nlmsg(nlm::OVERRUN, 0, 44, &[])),
        Err(FeedError::Decode(_))
    ));
}

#[test]
fn required_attributes_and_sizes_are_checked() {
    // No DEV_NAME.
    let p = nla(attr::DEV_INDEX, &1u32.to_le_bytes());
    assert!(decode_link(&p).unwrap_err().0.contains("DEV_NAME"));
    // DEV_INDEX of 2 bytes.
    let mut p = nla(attr::DEV_INDEX, &[1, 0]);
    p.extend(nla_str(attr::DEV_NAME, "x"));
    assert!(decode_link(&p).unwrap_err().0.contains("u32"));
    // NODE_GUID of 4 bytes.
    let mut p = mlx5_device(0, "m", 1);
    p.extend(nla(attr::NODE_GUID, &[1, 2, 3, 4]));
    assert!(decode_link(&p).unwrap_err().0.contains("u64"));
    // Netns mode of 4 bytes.
    assert!(decode_sys(&nla(attr::SYS_NETNS_MODE, &[1, 0, 0, 0])).is_err());
    // Port without PORT_INDEX.
    assert!(decode_port(&nla(attr::DEV_INDEX, &1u32.to_le_bytes())).is_err());
    // Invalid UTF-8 name.
    let mut p = nla(attr::DEV_INDEX, &1u32.to_le_bytes());
    p.extend(nla(attr::DEV_NAME, &[0xff, 0xfe, 0]));
    assert!(decode_link(&p).is_err());
}

#[test]
fn bad_lengths_are_errors_not_panics() {
    // Attribute length below the header size.
    assert!(split_attrs(&[2, 0, 1, 0, 0, 0, 0, 0]).is_err());
    // Attribute longer than the buffer.
    assert!(split_attrs(&[40, 0, 1, 0, 0, 0, 0, 0]).is_err());
    // Message length below 16 / above the datagram.
    let mut m = nlmsg(msg_type(cmd::GET), 0, 1, &[]);
    m[0] = 8;
    assert!(split_messages(&m).is_err());
    m[0] = 200;
    assert!(split_messages(&m).is_err());
    // NLMSG_ERROR too short.
    assert!(decode_ack(0, &[0, 0, 0, 0]).is_err());
    // NLMSG_ERROR claiming a 200-byte echo with TLVs but carrying 20 bytes.
    let mut p = (-1i32).to_le_bytes().to_vec();
    let mut h = nlmsg(1, 0, 1, &[])[..16].to_vec();
    h[0] = 200;
    p.extend(h);
    assert!(decode_ack(nlm::F_ACK_TLVS, &p).is_err());
}

#[test]
fn every_truncation_of_a_real_reply_is_handled() {
    let req = get_dump_request(50);
    let mut dgram = nlmsg(
        msg_type(cmd::GET),
        nlm::F_MULTI,
        50,
        &mlx5_device(0, "mlx5_0", 42),
    );
    dgram.extend(nlmsg(
        msg_type(cmd::GET),
        nlm::F_MULTI,
        50,
        &mlx5_device(1, "mlx5_1", 43),
    ));
    dgram.extend(done(50));
    let boundaries: Vec<usize> = {
        let msgs = split_messages(&dgram).unwrap();
        let mut b = vec![0];
        for m in msgs {
            b.push(b.last().unwrap() + 16 + m.payload.len());
        }
        b
    };
    for cut in 1..dgram.len() {
        let mut ex = Exchange::new(&req);
        let r = ex.feed(&dgram[..cut]);
        if boundaries.contains(&cut) {
            assert_eq!(r, Ok(false), "cut at a message boundary {cut}");
        } else {
            assert!(
                matches!(r, Err(FeedError::Decode(_))),
                "cut at {cut}: {r:?}"
            );
        }
        // A truncated device payload never decodes into a device silently.
        if cut > 16 && cut < boundaries[1] {
            let payload = &dgram[16..cut];
            if let Ok(l) = decode_link(payload) {
                assert_eq!(l.name, "mlx5_0");
            }
        }
    }
}

#[test]
fn garbage_never_panics() {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for len in 0..400usize {
        let mut buf = Vec::with_capacity(len);
        for _ in 0..len {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            buf.push(x as u8);
        }
        // Half the time, make the header plausible so the parser goes deeper.
        if len >= 16 && len % 2 == 0 {
            buf[0..4].copy_from_slice(&(len as u32).to_le_bytes());
            buf[8..12].copy_from_slice(&60u32.to_le_bytes());
        }
        let mut ex = Exchange::new(&get_dump_request(60));
        let _ = ex.feed(&buf);
        let _ = split_attrs(&buf);
        let _ = decode_link(&buf);
        let _ = decode_port(&buf);
        let _ = decode_sys(&buf);
        let _ = decode_ack(nlm::F_ACK_TLVS, &buf);
        let _ = decode_ack(nlm::F_ACK_TLVS | nlm::F_CAPPED, &buf);
    }
}

#[test]
fn guid_format() {
    assert_eq!(format_guid(0x0c42_a103_0065_7a8e), "0c42:a103:0065:7a8e");
    assert_eq!(format_guid(0), "0000:0000:0000:0000");
}
