// A JVM whose state is a HashMap on the heap that grows by one entry a
// tick. It checks the map against the counter every tick and exits (the
// counter stops) if anything was lost, then writes the counter atomically.
// Run as a single source file: java Counter.java PATH (no javac needed).
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.nio.file.StandardCopyOption;
import java.util.HashMap;
import java.util.Map;

public class Counter {
    public static void main(String[] args) throws Exception {
        Path out = Paths.get(args[0]);
        Path tmp = Paths.get(args[0] + ".tmp");
        Map<Integer, Long> squares = new HashMap<>();
        long sum = 0;
        for (long i = 0; ; i++) {
            squares.put((int) i, i * i);
            sum += i * i;
            long want = i * (i + 1) * (2 * i + 1) / 6;
            if (squares.size() != i + 1 || sum != want || squares.get((int) (i / 2)) != (i / 2) * (i / 2)) {
                System.err.println("state lost at " + i);
                System.exit(1);
            }
            Files.writeString(tmp, i + "\n");
            Files.move(tmp, out, StandardCopyOption.REPLACE_EXISTING, StandardCopyOption.ATOMIC_MOVE);
            Thread.sleep(50);
        }
    }
}
