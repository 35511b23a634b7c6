"""The download path of `fine_tuning_flm.data` (`download_file`, `extract_dataset`, `movielens_path`, `load_movielens`)
against an HTTP server on 127.0.0.1 that serves zips built here. Nothing real is fetched or read:
`MOVIELENS` is patched to point at the loopback server, FLM_CACHE and FLM_DATA point at empty temporary folders."""
import hashlib, http.server, io, threading, zipfile
import pytest
import fine_tuning_flm.data as data
from fine_tuning_flm.data import MOVIELENS, download_file, extract_dataset, load_movielens, movielens_path

# --- tiny datasets in the real GroupLens formats ---------------------------------------------------------------------

LATEST = {   # ml-latest-small: 7 ratings by 3 users on 4 of the 5 movies, tags on 2 movies
    'ratings.csv': 'userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,3,4.5,964981247\n2,1,3.5,1445714835\n'
                   '2,2,0.5,1445714840\n3,1,5.0,1306463578\n3,3,2.0,1306463600\n3,5,3.0,1306463700\n',
    'movies.csv': 'movieId,title,genres\n1,Toy Story (1995),Adventure|Animation|Children|Comedy|Fantasy\n'
                  '2,Jumanji (1995),Adventure|Children|Fantasy\n3,"American President, The (1995)",Comedy|Drama|Romance\n'
                  '4,Heat (1995),Action|Crime|Thriller\n5,Nixon (1995),(no genres listed)\n',
    'tags.csv': 'userId,movieId,tag,timestamp\n2,1,pixar,1445714994\n3,1,pixar,1445714996\n3,1,fun,1445714997\n'
                '1,3,politics,1445715000\n',
    'links.csv': 'movieId,imdbId,tmdbId\n1,0114709,862\n',
    'README.txt': 'Summary\n=======\nA tiny stand-in for ml-latest-small.\n',
}
LATEST_FILES = ('ratings.csv', 'movies.csv', 'tags.csv')

ML1M = {     # ml-1m: '::' separators, latin-1, coded ages and occupations
    'ratings.dat': '1::1193::5::978300760\n1::661::3::978302109\n2::1193::4::978298413\n2::3408::2::978299000\n',
    'movies.dat': '661::James and the Giant Peach (1996)::Animation|Children\'s|Musical\n'
                  '1193::One Flew Over the Cuckoo\'s Nest (1975)::Drama\n3408::Misérables, Les (1995)::Drama|Musical\n',
    'users.dat': '1::F::1::10::48067\n2::M::56::16::70072\n',
}
ML1M_FILES = ('ratings.dat', 'movies.dat', 'users.dat')

def make_zip(top, files, extra=()):
    "Zip bytes with every file under the folder `top/`, then the raw member names in `extra`."
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, 'w', zipfile.ZIP_DEFLATED) as z:
        z.writestr(f'{top}/', '')
        for name, text in files.items(): z.writestr(f'{top}/{name}', text.encode('latin-1' if top == 'ml-1m' else 'utf-8'))
        for name, text in extra: z.writestr(name, text)
    return buf.getvalue()

def md5(b): return hashlib.md5(b).hexdigest()

# --- a loopback HTTP server -------------------------------------------------------------------------------------------

class Server:
    "Serves `routes[path] = (body, content_length, n_bytes_sent)`; records every request path; 404 otherwise."
    def __init__(self):
        self.routes, self.requests = {}, []
        srv = self
        class Handler(http.server.BaseHTTPRequestHandler):   # HTTP/1.0: the connection closes after each response
            def do_GET(self):
                srv.requests.append(self.path)
                if self.path not in srv.routes: return self.send_error(404, 'File not found')
                body, length, sent = srv.routes[self.path]
                self.send_response(200)
                self.send_header('Content-Type', 'application/zip')
                self.send_header('Content-Length', str(length))
                self.end_headers()
                self.wfile.write(body[:sent])
            def log_message(self, *args): pass
        self.httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs=dict(poll_interval=0.02), daemon=True)
        self.thread.start()

    def serve(self, path, body, length=None, sent=None):
        "Serve `body` at `path`, announcing `length` bytes and sending the first `sent` (default: all of it)."
        self.routes[path] = (body, len(body) if length is None else length, len(body) if sent is None else sent)
        return self.url(path)

    def url(self, path): return f'http://127.0.0.1:{self.httpd.server_port}{path}'

    def close(self): self.httpd.shutdown(); self.httpd.server_close()

@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()

@pytest.fixture
def env(monkeypatch, tmp_path):
    "FLM_CACHE and FLM_DATA in empty temporary folders, no proxy between us and 127.0.0.1; returns the cache folder."
    for v in ('http_proxy', 'HTTP_PROXY', 'https_proxy', 'HTTPS_PROXY', 'all_proxy', 'ALL_PROXY'): monkeypatch.delenv(v, raising=False)
    cache, flm_data = tmp_path/'cache', tmp_path/'flm_data'
    flm_data.mkdir()
    monkeypatch.setenv('FLM_CACHE', str(cache)); monkeypatch.setenv('FLM_DATA', str(flm_data))
    yield cache
    assert list(flm_data.iterdir()) == [], 'nothing may be written to FLM_DATA'

def patch_spec(monkeypatch, name, url, body, files, **kw):
    "Point `MOVIELENS[name]` at `url`, pinning `body`'s size and digest unless `kw` overrides them."
    spec = dict(url=url, md5=md5(body), size=len(body), files=files) | kw
    monkeypatch.setitem(MOVIELENS, name, spec)
    assert data.MOVIELENS[name] is spec
    return spec

def leftovers(cache):
    "Everything under the cache folder, relative to it (hidden temporary files included)."
    return sorted(str(p.relative_to(cache)) for p in cache.rglob('*'))

# --- the good path ----------------------------------------------------------------------------------------------------

def test_good_zip_downloads_extracts_and_loads(env, server, monkeypatch):
    body = make_zip('ml-latest-small', LATEST)
    patch_spec(monkeypatch, 'ml-latest-small', server.serve('/ml-latest-small.zip', body), body, LATEST_FILES)
    d = load_movielens('ml-latest-small')
    assert server.requests == ['/ml-latest-small.zip']
    assert (len(d), d.n_users, d.n_items) == (7, 3, 5)
    assert d.ratings.item.nunique() == 4 and d.scale == (0.5, 5.0)
    assert d.path == env/'data'/'ml-latest-small'
    assert d.items.text[d.item_code(1)] == 'Toy Story (1995). Genres: Adventure, Animation, Children, Comedy, Fantasy. Tags: pixar, fun.'
    assert d.items.text[d.item_code(3)] == 'The American President (1995). Genres: Comedy, Drama, Romance. Tags: politics.'
    assert d.items.text[d.item_code(5)] == 'Nixon (1995).'
    # the zip is deleted after extraction, and no temporary file or folder is left
    assert leftovers(env) == ['data', 'data/ml-latest-small'] + [f'data/ml-latest-small/{f}' for f in sorted(LATEST)]
    # a second load uses the extracted copy: no new request
    assert len(load_movielens('ml-latest-small')) == 7
    assert server.requests == ['/ml-latest-small.zip']

def test_good_ml1m_zip_with_unpinned_digest(env, server, monkeypatch):
    body = make_zip('ml-1m', ML1M)
    patch_spec(monkeypatch, 'ml-1m', server.serve('/ml-1m.zip', body), body, ML1M_FILES, md5=None, size=None, min_size=len(body) - 1)
    d = load_movielens('ml-1m')
    assert (len(d), d.n_users, d.n_items) == (4, 2, 3)
    assert d.users.to_dict('records') == [dict(id=1, age='under 18', gender='F', occupation='K-12 student'),
                                          dict(id=2, age='56+', gender='M', occupation='self-employed')]
    assert d.items.text[d.item_code(3408)] == 'Les Misérables (1995). Genres: Drama, Musical.'
    assert leftovers(env) == ['data', 'data/ml-1m'] + [f'data/ml-1m/{f}' for f in sorted(ML1M)]

def test_download_file_writes_dest_atomically(env, server, tmp_path):
    body = make_zip('ml-latest-small', LATEST)
    url = server.serve('/x.zip', body)
    dest = tmp_path/'dl'/'x.zip'
    assert download_file(url, dest, md5=md5(body), size=len(body), progress=False) == dest
    assert dest.read_bytes() == body and [p.name for p in dest.parent.iterdir()] == ['x.zip']

# --- bad downloads: a clear error, nothing left behind ----------------------------------------------------------------

def test_wrong_checksum(env, server, monkeypatch):
    body = make_zip('ml-latest-small', LATEST)
    patch_spec(monkeypatch, 'ml-latest-small', server.serve('/ml-latest-small.zip', body), body, LATEST_FILES, md5='0'*32)
    with pytest.raises(ValueError, match=r'(?i)MD5|checksum') as e: movielens_path('ml-latest-small', progress=False)
    assert '0'*32 in str(e.value) and md5(body) in str(e.value)
    assert server.requests == ['/ml-latest-small.zip']
    assert leftovers(env) == ['data']

@pytest.mark.parametrize('progress', [False, True])
@pytest.mark.parametrize('announced', ['truncated', 'full'])
def test_truncated_zip(env, server, monkeypatch, announced, progress):
    "Half the bytes, announced either honestly (Content-Length = half) or as the full size the server fails to deliver."
    body = make_zip('ml-latest-small', LATEST); half = len(body)//2
    url = server.serve('/ml-latest-small.zip', body, length=half if announced == 'truncated' else len(body), sent=half)
    patch_spec(monkeypatch, 'ml-latest-small', url, body, LATEST_FILES)
    with pytest.raises(ValueError, match='truncated') as e: movielens_path('ml-latest-small', progress=progress)
    assert f'{half:,}' in str(e.value) and f'{len(body):,}' in str(e.value)
    assert leftovers(env) == ['data']

@pytest.mark.parametrize('announced', ['truncated', 'full'])
def test_truncated_below_min_size(env, server, monkeypatch, announced):
    "ml-1m style (no digest, a smallest size): a body smaller than `min_size` is refused."
    body = make_zip('ml-1m', ML1M); half = len(body)//2
    url = server.serve('/ml-1m.zip', body, length=half if announced == 'truncated' else len(body), sent=half)
    patch_spec(monkeypatch, 'ml-1m', url, body, ML1M_FILES, md5=None, size=None, min_size=len(body) - 1)
    with pytest.raises(ValueError, match='truncated') as e: movielens_path('ml-1m', progress=False)
    assert f'{half:,}' in str(e.value)
    assert leftovers(env) == ['data']

def test_truncated_above_min_size(env, server, monkeypatch):
    "No digest and a truncated body that still passes `min_size`: the zip itself must be refused."
    body = make_zip('ml-1m', ML1M); half = len(body)//2
    patch_spec(monkeypatch, 'ml-1m', server.serve('/ml-1m.zip', body, length=half), body, ML1M_FILES,
               md5=None, size=None, min_size=half//2)
    with pytest.raises(ValueError, match=r'ml-1m\.zip: not a valid zip'): movielens_path('ml-1m', progress=False)
    assert leftovers(env) == ['data']

@pytest.mark.parametrize('where', [0.1, 0.3])
def test_corrupt_body_with_intact_directory(env, server, monkeypatch, where):
    "No digest, full size, but garbage inside the compressed data (the central directory is intact)."
    body = bytearray(make_zip('ml-1m', ML1M))
    i = int(where*len(body))
    body[i:i+40] = bytes(b ^ 0x5A for b in body[i:i+40])
    body = bytes(body)
    zipfile.ZipFile(io.BytesIO(body)).namelist()    # the directory still reads: only extraction can notice
    patch_spec(monkeypatch, 'ml-1m', server.serve('/ml-1m.zip', body), body, ML1M_FILES, md5=None, size=None, min_size=100)
    with pytest.raises(ValueError, match=r'ml-1m\.zip'): movielens_path('ml-1m', progress=False)
    assert leftovers(env) == ['data']

def test_zip_missing_a_required_file(env, server, monkeypatch):
    body = make_zip('ml-latest-small', {k: v for k, v in LATEST.items() if k != 'tags.csv'})
    patch_spec(monkeypatch, 'ml-latest-small', server.serve('/ml-latest-small.zip', body), body, LATEST_FILES)
    with pytest.raises(ValueError, match='tags.csv') as e: movielens_path('ml-latest-small', progress=False)
    assert 'ratings.csv' not in str(e.value)
    assert leftovers(env) == ['data']

@pytest.mark.parametrize('evil', ['../evil', 'ml-latest-small/../../evil', '/tmp/evil-abs'])
def test_zip_slip_refused(env, server, monkeypatch, tmp_path, evil):
    body = make_zip('ml-latest-small', LATEST, extra=[(evil, 'pwned')])   # after the good files: a partial extraction exists
    patch_spec(monkeypatch, 'ml-latest-small', server.serve('/ml-latest-small.zip', body), body, LATEST_FILES)
    with pytest.raises(ValueError, match='unsafe member') as e: movielens_path('ml-latest-small', progress=False)
    assert 'evil' in str(e.value)
    assert leftovers(env) == ['data']
    assert not any(p.name.startswith('evil') for p in tmp_path.rglob('*'))

def test_extract_dataset_refuses_slip_directly(tmp_path):
    zp = tmp_path/'z.zip'; zp.write_bytes(make_zip('top', {'a.txt': 'a'}, extra=[('../evil', 'x')]))
    with pytest.raises(ValueError, match="'../evil'"): extract_dataset(zp, tmp_path/'out', ('a.txt',))
    assert sorted(p.name for p in tmp_path.iterdir()) == ['z.zip']

def test_server_404(env, server, monkeypatch):
    body = make_zip('ml-latest-small', LATEST)
    url = server.url('/ml-latest-small.zip')    # nothing served there
    patch_spec(monkeypatch, 'ml-latest-small', url, body, LATEST_FILES)
    with pytest.raises(OSError) as e: load_movielens('ml-latest-small')
    msg = str(e.value)
    assert '404' in msg and url in msg and 'path=' in msg and 'FLM_DATA' in msg
    assert server.requests == ['/ml-latest-small.zip']
    assert leftovers(env) == ['data']

# --- no download at all -----------------------------------------------------------------------------------------------

def write_dataset(folder, files):
    folder.mkdir(parents=True)
    for k, v in files.items(): (folder/k).write_text(v)

@pytest.mark.parametrize('where', ['cache', 'flm_data'])
def test_extracted_copy_used_without_request(env, server, monkeypatch, tmp_path, where):
    body = make_zip('ml-latest-small', LATEST)
    patch_spec(monkeypatch, 'ml-latest-small', server.serve('/ml-latest-small.zip', body), body, LATEST_FILES)
    folder = (env/'data' if where == 'cache' else tmp_path/'flm_data')/'ml-latest-small'
    write_dataset(folder, LATEST)
    d = load_movielens('ml-latest-small')
    assert d.path == folder and len(d) == 7
    assert server.requests == []
    if where == 'flm_data':    # checked by `env` at teardown otherwise; here FLM_DATA legitimately holds the copy
        import shutil; shutil.rmtree(folder)

def test_incomplete_cached_copy_is_replaced(env, server, monkeypatch):
    "A cached folder missing files is not used; the fresh download replaces it whole."
    write_dataset(env/'data'/'ml-latest-small', {'ratings.csv': LATEST['ratings.csv'], 'stale.txt': 'x'})
    body = make_zip('ml-latest-small', LATEST)
    patch_spec(monkeypatch, 'ml-latest-small', server.serve('/ml-latest-small.zip', body), body, LATEST_FILES)
    assert len(load_movielens('ml-latest-small')) == 7
    assert server.requests == ['/ml-latest-small.zip']
    assert leftovers(env) == ['data', 'data/ml-latest-small'] + [f'data/ml-latest-small/{f}' for f in sorted(LATEST)]

def test_path_missing_files(env, server, monkeypatch, tmp_path):
    body = make_zip('ml-latest-small', LATEST)
    patch_spec(monkeypatch, 'ml-latest-small', server.serve('/ml-latest-small.zip', body), body, LATEST_FILES)
    folder = tmp_path/'mine'; write_dataset(folder, {'ratings.csv': LATEST['ratings.csv']})
    with pytest.raises(FileNotFoundError) as e: load_movielens('ml-latest-small', path=folder)
    msg = str(e.value)
    assert str(folder) in msg and 'movies.csv' in msg and 'tags.csv' in msg and "'ratings.csv'" not in msg
    assert server.requests == []

def test_path_used_as_is(env, server, tmp_path):
    folder = tmp_path/'mine'; write_dataset(folder, LATEST)
    assert movielens_path('ml-latest-small', path=str(folder)) == folder
    assert len(load_movielens('ml-latest-small', path=folder)) == 7
    assert server.requests == []

@pytest.mark.parametrize('fn', [movielens_path, load_movielens])
def test_unknown_dataset(env, server, fn):
    with pytest.raises(ValueError, match='ml-20m') as e: fn('ml-20m')
    assert all(repr(k) in str(e.value) for k in ('ml-100k', 'ml-latest-small', 'ml-1m'))
    assert server.requests == []
