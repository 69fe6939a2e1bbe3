use std::time::Duration;

use remora_api::route::Outlier;

use super::*;

fn upstream(last: u8) -> Arc<Upstream> {
    Arc::new(Upstream {
        endpoint: Endpoint {
            address: SocketAddr::from(([198, 18, 0, last], 8080)),
            identity: None,
            workload: None,
        },
        way: Way::Direct,
        load: Load::default(),
        service: None,
        cluster: None,
        series: OnceLock::new(),
    })
}

fn balancer(count: u8, policy: DestinationPolicy) -> (Arc<Balancer>, Vec<Arc<Upstream>>) {
    let upstreams: Vec<_> = (1..=count).map(upstream).collect();
    (
        Arc::new(Balancer::new(upstreams.clone(), policy)),
        upstreams,
    )
}

fn policy(load_balancer: LoadBalancer) -> DestinationPolicy {
    DestinationPolicy {
        load_balancer,
        ..Default::default()
    }
}

fn address(u: &Upstream) -> SocketAddr {
    u.endpoint.address
}

const FAILED: Attempt = Attempt::Answered {
    status: 503,
    grpc: None,
};
const OK: Attempt = Attempt::Answered {
    status: 200,
    grpc: None,
};

/// A connection's original destination no test balancer passes through to.
fn nowhere() -> Original {
    Original::new(SocketAddr::from(([198, 19, 0, 1], 80)))
}

#[tokio::test(start_paused = true)]
async fn passthrough_sends_every_try_to_the_original_destination() {
    let (b, ups) = balancer(3, policy(LoadBalancer::Passthrough));
    let original = SocketAddr::from(([198, 19, 7, 7], 9080));
    let connection = Original::new(original);
    let tried = [address(&ups[0])];
    for _ in 0..3 {
        let upstream = b.pick(&tried, &connection).expect("the original");
        assert_eq!(address(&upstream), original);
        assert!(matches!(upstream.way, Way::Direct));
    }
    let (empty, _) = balancer(0, policy(LoadBalancer::Passthrough));
    assert!(
        empty.pick(&[], &connection).is_ok(),
        "no endpoint is needed"
    );
}

#[tokio::test(start_paused = true)]
async fn retries_prefer_endpoints_not_tried_and_any_beats_none() {
    for algorithm in [
        LoadBalancer::PeakEwma,
        LoadBalancer::RoundRobin,
        LoadBalancer::LeastRequest,
        LoadBalancer::Random,
    ] {
        let (b, ups) = balancer(3, policy(algorithm));
        let tried = [address(&ups[0]), address(&ups[1])];
        for _ in 0..20 {
            assert_eq!(
                address(&b.pick(&tried, &nowhere()).expect("one")),
                address(&ups[2]),
                "{algorithm:?}"
            );
        }
        let all: Vec<SocketAddr> = ups.iter().map(|u| address(u)).collect();
        assert!(
            b.pick(&all, &nowhere()).is_ok(),
            "{algorithm:?}: every endpoint tried, one is still chosen"
        );
    }
    let (empty, _) = balancer(0, DestinationPolicy::default());
    assert_eq!(empty.pick(&[], &nowhere()).err(), Some(NoUpstream::Empty));
}

#[tokio::test(start_paused = true)]
async fn round_robin_takes_turns() {
    let (b, ups) = balancer(3, policy(LoadBalancer::RoundRobin));
    let picked: Vec<SocketAddr> = (0..6)
        .map(|_| address(&b.pick(&[], &nowhere()).expect("one")))
        .collect();
    let expected: Vec<SocketAddr> = ups.iter().chain(ups.iter()).map(|u| address(u)).collect();
    assert_eq!(picked, expected);
}

#[tokio::test(start_paused = true)]
async fn two_choices_take_the_cheaper_endpoint() {
    // With two endpoints both are always the two choices, so the cheaper one always wins.
    let (b, ups) = balancer(2, policy(LoadBalancer::LeastRequest));
    let _busy: Vec<InFlight> = (0..3).map(|_| ups[0].start(false)).collect();
    for _ in 0..20 {
        assert_eq!(
            address(&b.pick(&[], &nowhere()).expect("one")),
            address(&ups[1])
        );
    }
    let (b, ups) = balancer(2, policy(LoadBalancer::PeakEwma));
    // A slow answer raises the estimate at once (the peak)...
    assert!(b.timed());
    let slow = ups[0].start(true);
    tokio::time::advance(Duration::from_millis(500)).await;
    drop(slow);
    for _ in 0..20 {
        assert_eq!(
            address(&b.pick(&[], &nowhere()).expect("one")),
            address(&ups[1])
        );
    }
    // ...and fast answers decay it back below the untried endpoint's 30 ms.
    for _ in 0..50 {
        tokio::time::advance(Duration::from_secs(1)).await;
        drop(ups[0].start(true));
    }
    assert_eq!(
        address(&b.pick(&[], &nowhere()).expect("one")),
        address(&ups[0])
    );
}

fn outlier(consecutive_5xx: u32, max_ejection_percent: u32) -> DestinationPolicy {
    DestinationPolicy {
        load_balancer: LoadBalancer::RoundRobin,
        outlier: Some(Outlier {
            consecutive_5xx: Some(consecutive_5xx),
            consecutive_gateway: None,
            interval: Duration::from_secs(1),
            base_ejection: Duration::from_secs(3),
            max_ejection_percent,
        }),
        ..Default::default()
    }
}

#[tokio::test(start_paused = true)]
async fn consecutive_errors_eject_until_the_interval_after_the_ejection_time() {
    let (b, ups) = balancer(2, outlier(2, 100));
    b.report(&ups[0], FAILED);
    b.report(&ups[0], OK);
    b.report(&ups[0], FAILED);
    assert!(
        !ups[0].ejected(Instant::now()),
        "a success resets the count"
    );
    b.report(&ups[0], FAILED);
    assert!(ups[0].ejected(Instant::now()));
    for _ in 0..10 {
        assert_eq!(
            address(&b.pick(&[], &nowhere()).expect("one")),
            address(&ups[1])
        );
    }
    tokio::time::advance(Duration::from_millis(2900)).await;
    assert!(ups[0].ejected(Instant::now()), "still within its 3 s");
    tokio::time::advance(Duration::from_millis(1100)).await;
    assert!(
        !ups[0].ejected(Instant::now()),
        "readmitted by the next interval"
    );
    // A second ejection lasts twice as long.
    b.report(&ups[0], Attempt::ConnectFailure);
    b.report(&ups[0], Attempt::Reset);
    tokio::time::advance(Duration::from_millis(5500)).await;
    assert!(ups[0].ejected(Instant::now()));
    tokio::time::advance(Duration::from_millis(1000)).await;
    assert!(!ups[0].ejected(Instant::now()));
}

#[tokio::test(start_paused = true)]
async fn max_ejection_percent_keeps_endpoints_in_rotation() {
    // 10% of 2 endpoints is none, but one may always be ejected.
    let (b, ups) = balancer(2, outlier(1, 10));
    b.report(&ups[0], FAILED);
    b.report(&ups[1], FAILED);
    assert!(ups[0].ejected(Instant::now()));
    assert!(
        !ups[1].ejected(Instant::now()),
        "the second would pass the limit"
    );
    let (b, ups) = balancer(2, DestinationPolicy::default());
    b.report(&ups[0], FAILED);
    assert!(
        !ups[0].ejected(Instant::now()),
        "no outlier detection configured"
    );
}

#[tokio::test(start_paused = true)]
async fn a_full_pool_queues_then_overflows() {
    let limits = PoolLimits {
        max_connections: Some(1),
        max_pending: Some(1),
        ..Default::default()
    };
    let (b, _) = balancer(1, DestinationPolicy::default());
    let first = b.admit(&limits).await.expect("a free place");
    let queued = {
        let b = b.clone();
        tokio::spawn(async move { b.admit(&limits).await.map(|_| ()) })
    };
    tokio::task::yield_now().await;
    assert_eq!(b.admit(&limits).await.err(), Some(NoUpstream::Overflow));
    drop(first);
    assert_eq!(queued.await.expect("joined"), Ok(()));
    assert!(b.admit(&PoolLimits::default()).await.is_ok(), "no limits");
}

#[test]
fn max_retries_bounds_the_retries_in_flight() {
    let limits = PoolLimits {
        max_retries: Some(1),
        ..Default::default()
    };
    let (b, _) = balancer(1, DestinationPolicy::default());
    let slot = b.retry_slot(&limits).expect("one retry");
    assert!(b.retry_slot(&limits).is_none());
    drop(slot);
    assert!(b.retry_slot(&limits).is_some());
}
