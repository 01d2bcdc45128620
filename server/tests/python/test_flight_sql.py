"""The Flight SQL server driven by a real client: ADBC's Flight SQL driver
and pyarrow, as analysts and tools use them."""

import adbc_driver_manager
import pyarrow as pa
import pytest

from conftest import Server


def test_query_without_and_with_parameters(conn):
    with conn.cursor() as cur:
        cur.execute("SELECT 1 AS x, 'a' AS s")
        assert cur.fetchall() == [(1, "a")]
        cur.execute("SELECT $1 + 1 AS y", parameters=(41,))
        assert cur.fetchall() == [(42,)]
        cur.execute("SELECT ? AS a, ? AS b", parameters=(5, "it's"))
        assert cur.fetchall() == [(5, "it's")]


def test_ddl_then_query(conn, tmp_path):
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE people (id BIGINT, name VARCHAR, PRIMARY KEY (id) NOT ENFORCED)")
        cur.execute("INSERT INTO people VALUES (1, 'ada'), (2, 'grace')")
        cur.execute("INSERT INTO people VALUES (?, ?)", parameters=(3, "edsger"))
        cur.execute("SELECT id, name FROM people ORDER BY id")
        assert cur.fetchall() == [(1, "ada"), (2, "grace"), (3, "edsger")]
        # A file table on the local store, declared Flink-style.
        out = tmp_path / "out"
        cur.execute(
            f"CREATE TABLE out_csv (id BIGINT, name VARCHAR) WITH ("
            f"'connector' = 'filesystem', 'path' = '{out}/', 'format' = 'csv')"
        )
        cur.execute("INSERT OVERWRITE out_csv SELECT id, upper(name) FROM people WHERE id < 3")
        cur.execute("SELECT name FROM out_csv ORDER BY id")
        assert cur.fetchall() == [("ADA",), ("GRACE",)]


def test_ddl_runs_once(conn):
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE once (id BIGINT)")
        cur.execute("INSERT INTO once VALUES (1)")
        cur.execute("SELECT count(*) FROM once")
        # Prepare and execute went through; the insert committed exactly once.
        assert cur.fetchall() == [(1,)]


def test_results_use_plain_string_types(conn):
    with conn.cursor() as cur:
        cur.execute("SELECT CAST('x' AS VARCHAR) AS s, arrow_cast('y', 'Utf8View') AS v")
        table = cur.fetch_arrow_table()
        assert table.schema.field("s").type == pa.string()
        assert table.schema.field("v").type == pa.string()


def test_ingest_modes(conn):
    data = pa.table({"id": pa.array([1, 2, 3], pa.int64()), "v": ["a", "b", "c"]})
    with conn.cursor() as cur:
        assert cur.adbc_ingest("ingested", data, mode="create") == 3
        cur.execute("SELECT count(*), sum(id) FROM ingested")
        assert cur.fetchall() == [(3, 6)]
        cur.adbc_ingest("ingested", data, mode="append")
        cur.execute("SELECT count(*) FROM ingested")
        assert cur.fetchall() == [(6,)]
        with pytest.raises(adbc_driver_manager.Error, match="already exists"):
            cur.adbc_ingest("ingested", data, mode="create")
        other = pa.table({"k": pa.array([10], pa.int32())})
        cur.adbc_ingest("ingested", other, mode="replace")
        cur.execute("SELECT * FROM ingested")
        assert cur.fetchall() == [(10,)]
        cur.adbc_ingest("ingested2", data, mode="create_append")
        cur.adbc_ingest("ingested2", data, mode="create_append")
        cur.execute("SELECT count(*) FROM ingested2")
        assert cur.fetchall() == [(6,)]


def test_metadata(conn):
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE meta_t (id BIGINT NOT NULL, name VARCHAR)")
        schema = cur.adbc_execute_schema("SELECT id, name FROM meta_t")
        assert schema.names == ["id", "name"]
        assert schema.field("id").type == pa.int64()
    table_schema = conn.adbc_get_table_schema("meta_t")
    assert table_schema.names == ["id", "name"]
    assert table_schema.field("name").type in (pa.string(), pa.string_view())
    objects = conn.adbc_get_objects(depth="all").read_all().to_pylist()
    catalogs = {c["catalog_name"]: c for c in objects}
    assert "sluice" in catalogs
    public = [s for s in catalogs["sluice"]["catalog_db_schemas"] if s["db_schema_name"] == "public"]
    tables = {t["table_name"]: t for t in public[0]["db_schema_tables"]}
    assert "meta_t" in tables
    assert [c["column_name"] for c in tables["meta_t"]["table_columns"]] == ["id", "name"]
    info = conn.adbc_get_info()
    assert info["vendor_name"] == "Sluice"


def test_session_state_is_kept_per_session(server):
    a = server.connect()
    b = server.connect()
    try:
        with a.cursor() as cur:
            cur.execute("SET datafusion.execution.batch_size = 1234")
            cur.execute(
                "SELECT value FROM information_schema.df_settings "
                "WHERE name = 'datafusion.execution.batch_size'"
            )
            assert cur.fetchall() == [("1234",)]
        with b.cursor() as cur:
            cur.execute(
                "SELECT value FROM information_schema.df_settings "
                "WHERE name = 'datafusion.execution.batch_size'"
            )
            assert cur.fetchall() != [("1234",)]
    finally:
        a.close()
        b.close()


def test_user_error_names_the_problem(conn):
    with conn.cursor() as cur:
        with pytest.raises(adbc_driver_manager.ProgrammingError) as e:
            cur.execute("SELECT no_such_column FROM (SELECT 1 AS a)")
        assert "no_such_column" in str(e.value)
        with pytest.raises(adbc_driver_manager.Error) as e:
            cur.execute("SELEC 1")
        assert "line 1" in str(e.value)


def test_large_result_streams_with_bounded_memory(server, conn):
    rows = 10_000_000
    with conn.cursor() as cur:
        cur.execute(
            f"SELECT value, repeat('x', 100) AS pad FROM generate_series(1, {rows})"
        )
        reader = cur.fetch_record_batch()
        seen = 0
        for batch in reader:
            seen += batch.num_rows
    assert seen == rows
    # About 1.1 GB crossed the wire; the server must never have held it.
    peak = server.peak_rss_bytes()
    assert peak < 400 * 1024 * 1024, f"server peak RSS {peak / 2**20:.0f} MiB"


def test_basic_auth(tmp_path):
    users = tmp_path / "users"
    users.write_text("alice:plain:wonderland\n")
    s = Server(tmp_path, "--auth", "basic", "--users-file", str(users))
    try:
        good = s.connect(username="alice", password="wonderland")
        with good.cursor() as cur:
            cur.execute("SELECT 7")
            assert cur.fetchall() == [(7,)]
        good.close()
        with pytest.raises(adbc_driver_manager.Error) as e:
            bad = s.connect(username="alice", password="nope")
            with bad.cursor() as cur:
                cur.execute("SELECT 1")
        assert "invalid user name or password" in str(e.value) or "Unauthenticated" in str(e.value)
    finally:
        s.stop()


def _self_signed(tmp_path):
    """A self-signed certificate for 127.0.0.1 (cryptography comes with moto)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    (tmp_path / "cert.pem").write_bytes(cert_pem)
    (tmp_path / "key.pem").write_bytes(key_pem)
    return cert_pem.decode()


def test_tls(tmp_path):
    cert = _self_signed(tmp_path)
    s = Server(
        tmp_path,
        "--tls-cert",
        str(tmp_path / "cert.pem"),
        "--tls-key",
        str(tmp_path / "key.pem"),
    )
    try:
        s.uri = f"grpc+tls://{s.address}"
        c = s.connect(**{"adbc.flight.sql.client_option.tls_root_certs": cert})
        with c.cursor() as cur:
            cur.execute("SELECT 'secure' AS s")
            assert cur.fetchall() == [("secure",)]
        c.close()
    finally:
        s.stop()
