# A multiprocessing pool writing to a SQLite database (WAL mode). Each
# worker keeps one connection open for its whole life (holding SQLite's
# locks on the -shm file), and inserts one row per task; the parent hands
# out batches of BATCH numbers and, once a batch is done, writes how many
# batches are complete to the counter file (atomically).
import multiprocessing as mp
import os
import sqlite3
import sys
import time

BATCH = 6
con = None


def init(db):
    global con
    con = sqlite3.connect(db, timeout=30)


def work(n):
    with con:
        con.execute("INSERT INTO rows(n, sq, pid) VALUES (?, ?, ?)", (n, n * n, os.getpid()))
    return n


if __name__ == "__main__":
    db, counter = sys.argv[1], sys.argv[2]
    c = sqlite3.connect(db)
    c.execute("PRAGMA journal_mode=WAL")
    c.execute("CREATE TABLE rows(n INTEGER PRIMARY KEY, sq INTEGER NOT NULL, pid INTEGER NOT NULL)")
    c.commit()
    c.close()
    with mp.Pool(3, initializer=init, initargs=(db,)) as pool:
        batches = 0
        while True:
            done = pool.map(work, range(batches * BATCH, (batches + 1) * BATCH))
            assert done == list(range(batches * BATCH, (batches + 1) * BATCH)), done
            batches += 1
            with open(counter + ".tmp", "w") as f:
                f.write("%d\n" % batches)
            os.replace(counter + ".tmp", counter)
            time.sleep(0.05)
